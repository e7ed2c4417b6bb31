"""`--workers N`: N processes accept on the same ports (SO_REUSEPORT, the kernel spreads
the connections), so a multi-core server uses its cores. The first process is the
master: it starts the others with its own command line, forwards SIGHUP and SIGTERM to
them, and its admin listener speaks for all of them: the stats page and /stats.json show
every worker, and a server state or weight change is applied in each.

A worker's own admin listener is on an ephemeral loopback port, which it reports to the
master on its first line of standard output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from foobar.admin import admin_headers
from foobar.errors import FoobarError
from foobar.http.client import PoolConfig, UpstreamPool

log = logging.getLogger("foobar.lb.workers")

# Marks a worker process; not a FOOBAR_LB_* setting, so no one sets it by accident.
WORKER_ENV = "FOOBAR_WORKER"
STOP_TIMEOUT = 60.0


def worker_index() -> int:
    return int(os.environ.get(WORKER_ENV, "0"))


def report_admin_port(port: int) -> None:
    """A worker tells the master where its admin listener is."""
    print(f"admin-port {port}", flush=True)


class Worker:
    def __init__(
        self,
        index: int,
        process: asyncio.subprocess.Process,
        admin_port: int,
        token: str | None,
    ) -> None:
        self.index = index
        self.process = process
        self.pool = UpstreamPool("127.0.0.1", admin_port, PoolConfig(read_timeout=5.0))
        # a change goes to the worker's listener as any other admin client sends it
        self.headers = admin_headers(f"127.0.0.1:{admin_port}", token)

    async def call(self, method: str, path: str, body: bytes | None = None) -> Any:
        response = await self.pool.request(method, path.encode(), self.headers, body)
        return json.loads(await response.read())


class Workers:
    """The master's view of the other worker processes."""

    def __init__(self, argv: Sequence[str], token: str | None) -> None:
        self.argv = list(argv)
        self.token = token
        self.workers: list[Worker] = []

    async def start(self, count: int) -> None:
        for index in range(1, count):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "foobar.lb",
                *self.argv,
                env={**os.environ, WORKER_ENV: str(index)},
                stdout=asyncio.subprocess.PIPE,
            )
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            if not line.startswith(b"admin-port "):
                raise FoobarError(f"worker {index} did not start (exit code {process.returncode})")
            port = int(line.split()[1])
            self.workers.append(Worker(index, process, port, self.token))
            log.info("event=worker_started index=%d pid=%d", index, process.pid)

    def signal(self, signum: int) -> None:
        for worker in self.workers:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signum)

    async def snapshots(self) -> list[Any]:
        results = []
        for worker in self.workers:
            try:
                results.append(await worker.call("GET", "/stats.json"))
            except FoobarError as exc:
                results.append(
                    {"worker": worker.index, "pid": worker.process.pid, "error": str(exc)}
                )
        return results

    async def forward(self, method: str, path: str, body: bytes) -> list[Any]:
        return [await worker.call(method, path, body) for worker in self.workers]

    async def stop(self) -> None:
        self.signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                await asyncio.wait_for(worker.process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                worker.process.kill()
                await worker.process.wait()
            await worker.pool.close()
