"""Backends the balancer's tests start (processes, so they can be killed -9) and the
balancer itself, in-process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from foobar.lb.serve import LoadBalancer
from foobar.lb.settings import LbSettings

ROOT = Path(__file__).resolve().parents[2]


class Backend:
    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self.port = port
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> Backend:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.lb.backend_server",
            self.name,
            str(self.port),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        self.port = int(await asyncio.wait_for(self.process.stdout.readline(), 10))
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGKILL)

    async def stop(self) -> None:
        self.kill()
        if self.process is not None:
            await self.process.wait()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def backends() -> AsyncIterator[Callable[[str], Awaitable[Backend]]]:
    started: list[Backend] = []

    async def start(name: str, port: int = 0) -> Backend:
        backend = await Backend(name, port).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.stop()


StartLb = Callable[..., Awaitable[LoadBalancer]]


@pytest.fixture
async def start_lb() -> AsyncIterator[StartLb]:
    started: list[LoadBalancer] = []

    async def start(**fields: Any) -> LoadBalancer:
        fields.setdefault("name", "lb1")
        fields.setdefault("access_log", False)
        lb = LoadBalancer(LbSettings.model_validate(fields))
        await lb.start()
        started.append(lb)
        return lb

    yield start
    for lb in started:
        await lb.stop()


def address_of(lb: LoadBalancer, frontend: str = "default") -> tuple[str, int]:
    server = lb.balancer.listeners[frontend].server
    assert server is not None
    return server.address


def url_of(lb: LoadBalancer, frontend: str = "default", scheme: str = "http") -> str:
    host, port = address_of(lb, frontend)
    return f"{scheme}://{host}:{port}"


def backend_settings(*servers: str, **extra: Any) -> dict[str, Any]:
    return {"name": "web", "servers": list(servers), **extra}
