"""A primary-replica pair for tests, started by foobar.db's own supervisor in a temporary
directory on free ports (the `db_cluster` fixture in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomysql
import httpx

from foobar.db.replication import Node
from foobar.db.settings import DbSettings, InstanceSettings
from foobar.db.supervisor import Supervisor


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.settings = supervisor.settings

    def spec(self, name: str) -> InstanceSettings:
        return self.supervisor.specs[name]

    @property
    def primary(self) -> InstanceSettings:
        return self.spec(self.supervisor.primary)

    @property
    def replica(self) -> InstanceSettings:
        return self.spec(self.supervisor.replicas[0])

    def dsn(self, name: str) -> str:
        spec = self.spec(name)
        return (
            f"mysql://{self.settings.app_user}:{self.supervisor.app_password}"
            f"@{spec.host}:{spec.port}/{self.settings.app_schema}"
        )

    def admin(self, name: str) -> Node:
        return self.supervisor.nodes[name]

    async def app_connection(self, name: str) -> aiomysql.Connection:
        spec = self.spec(name)
        return await aiomysql.connect(
            host=spec.host,
            port=spec.port,
            user=self.settings.app_user,
            password=self.supervisor.app_password,
            db=self.settings.app_schema,
            autocommit=True,
        )

    async def app_query(self, name: str, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        connection = await self.app_connection(name)
        try:
            async with connection.cursor() as cursor:
                await cursor.execute(sql, args)
                return list(await cursor.fetchall())
        finally:
            connection.close()

    async def wait_until(self, name: str, sql: str, expected: Any, timeout: float = 15.0) -> None:
        """Poll `sql` on instance `name` until its first value equals `expected`. A query
        may fail while the server starts or catches up; on timeout the last value and the
        last error are both reported (the error chained), not hidden."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        value: Any = None
        error: Exception | None = None
        while loop.time() < deadline:
            try:
                value = (await self.app_query(name, sql))[0][0]
            except Exception as exc:
                error = exc
            else:
                error = None
                if value == expected:
                    return
            await asyncio.sleep(0.1)
        last = f"; last error: {error!r}" if error is not None else ""
        raise AssertionError(
            f"{name}: {sql} gave {value!r}, expected {expected!r} within {timeout}s{last}"
        ) from error


def cluster_settings(state_dir: Path, **overrides: Any) -> DbSettings:
    fields: dict[str, Any] = {
        "state_dir": state_dir,
        "primary_port": free_port(),
        "replica_port": free_port(),
        "check_interval": 0.2,
        "semi_sync_timeout": 0.5,
        "innodb_buffer_pool_size": "32M",
        **overrides,
    }
    return DbSettings.model_validate(fields)


@contextlib.asynccontextmanager
async def running_cluster(settings: DbSettings) -> AsyncIterator[Cluster]:
    supervisor = Supervisor(settings)
    await supervisor.start()
    watcher = asyncio.create_task(supervisor.watch())
    try:
        yield Cluster(supervisor)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await supervisor.stop()


ROOT = Path(__file__).resolve().parents[1]
# the agents and the witness share it: epoch changes carry it (issue 16)
ADMIN_TOKEN = "agents-and-witness-admin-token"
APP_PASSWORD = "app-password-for-tests"
REPLICATION_PASSWORD = "replication-password-for-tests"


class AgentCluster:
    """Two agents (`serve --agent`) and a witness, each its own process on loopback, as
    on three hosts: what failover tests kill, freeze and restart."""

    def __init__(self, base: Path, failover_after: float = 1.0, interval: float = 0.2) -> None:
        self.base = base
        self.failover_after = failover_after
        self.interval = interval
        self.ports = {"primary": free_port(), "replica": free_port()}
        self.admins = {"primary": free_port(), "replica": free_port(), "witness": free_port()}
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.logs = base / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def admin(self, name: str) -> str:
        return f"127.0.0.1:{self.admins[name]}"

    def dsn(self, name: str) -> str:
        return f"mysql://foobar:{APP_PASSWORD}@127.0.0.1:{self.ports[name]}/foobar"

    def agent_args(self, name: str, *extra: str) -> list[str]:
        other = "replica" if name == "primary" else "primary"
        return [
            "serve",
            "--agent",
            name,
            "--state-dir",
            str(self.base / name),
            "--primary-port",
            str(self.ports["primary"]),
            "--replica-port",
            str(self.ports["replica"]),
            "--admin",
            self.admin(name),
            "--peer",
            f"{other}={self.admin(other)}",
            "--witness",
            self.admin("witness"),
            "--failover-after",
            str(self.failover_after),
            *extra,
        ]

    def witness_args(self) -> list[str]:
        return [
            "witness",
            "--state-dir",
            str(self.base / "witness"),
            "--admin",
            self.admin("witness"),
            "--instance",
            f"primary=127.0.0.1:{self.ports['primary']}",
            "--instance",
            f"replica=127.0.0.1:{self.ports['replica']}",
            "--failover-after",
            str(self.failover_after),
            "--check-interval",
            str(self.interval),
        ]

    async def start(self, name: str, *extra: str) -> None:
        args = self.witness_args() if name == "witness" else self.agent_args(name, *extra)
        environment = {
            **os.environ,
            "FOOBAR_DB_APP_PASSWORD": APP_PASSWORD,
            "FOOBAR_DB_REPLICATION_PASSWORD": REPLICATION_PASSWORD,
            "FOOBAR_DB_CHECK_INTERVAL": str(self.interval),
            "FOOBAR_DB_INNODB_BUFFER_POOL_SIZE": "32M",
            "FOOBAR_DB_ADMIN_TOKEN": ADMIN_TOKEN,
            "FOOBAR_WITNESS_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        with (self.logs / f"{name}.log").open("ab") as log:
            self.processes[name] = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "foobar.db",
                *args,
                cwd=ROOT,
                env=environment,
                stdout=log,
                stderr=log,
            )

    async def status(self, name: str) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=2.0) as client:
            response = await client.get(f"http://{self.admin(name)}/status")
            return dict(response.json())

    async def until(
        self, name: str, check: Callable[[dict[str, Any]], bool], timeout: float = 60.0
    ) -> dict[str, Any]:
        """Poll `name`'s /status until `check` holds; its status then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: Any = None
        while loop.time() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                last = await self.status(name)
                if check(last):
                    return last
            await asyncio.sleep(0.1)
        tail = (self.logs / f"{name}.log").read_text()[-3000:]
        raise AssertionError(f"{name} never got there; last status {last}\n{tail}")

    async def server_pid(self, name: str) -> int:
        status = await self.status(name)
        pid = status["instances"][0]["pid"]
        assert isinstance(pid, int)
        return pid

    def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)

    async def stop(self, name: str) -> None:
        process = self.processes.get(name)
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 60)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def stop_all(self) -> None:
        for name in ("primary", "replica", "witness"):
            await self.stop(name)
        # servers whose agent was killed: by the pid files they wrote, never by name
        for name in ("primary", "replica"):
            pid_file = self.base / name / name / "mysqld.pid"
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text())
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
                if str(self.base).encode() in command:  # still ours, not a reused pid
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def running_agents(base: Path, failover_after: float = 1.0) -> AsyncIterator[AgentCluster]:
    cluster = AgentCluster(base, failover_after)
    try:
        await cluster.start("witness")
        await cluster.start("primary")
        await cluster.start("replica")
        # ready: the primary writable in epoch 1 with semi-sync back on (not degraded)
        await cluster.until(
            "primary", lambda s: s["healthy"] and not s["epoch"]["degraded"], timeout=90
        )
        # and the replica's agent has learnt it (it polls; a test may take its sources away)
        await cluster.until("replica", lambda s: not s["epoch"]["degraded"], timeout=30)
        yield cluster
    finally:
        await cluster.stop_all()
