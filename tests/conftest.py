"""Helpers every test uses: uvloop as the loop, a server on a free loopback port, and a
raw-socket client that sends exactly the bytes it is given."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import uvloop

from foobar.http.server import Handler, Server, ServerConfig
from tests.dbcluster import Cluster, cluster_settings, running_cluster


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every test runs on uvloop, the loop every entry point uses."""
    return {"uvloop": uvloop.new_event_loop}


class RawClient:
    """One TCP connection driven byte by byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> RawClient:
        reader, writer = await asyncio.open_connection(*address)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        """Read one response: (status, lower-cased headers, body). Handles both framings."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = b""
            if "content-length" in headers:
                body = await self.reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding") == "chunked":
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    chunk = await self.reader.readexactly(size + 2)
                    if size == 0:
                        break
                    body += chunk[:-2]
            return status, headers, body

    async def head_only(self, timeout: float = 5.0) -> tuple[int, dict[str, str]]:
        """Read a response to HEAD (or 1xx/204/304): the head and nothing more."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers

    async def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closed the connection (EOF with nothing more sent)."""
        try:
            async with asyncio.timeout(timeout):
                rest = await self.reader.read()
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return rest == b""

    def close(self) -> None:
        self.writer.close()


def peak_rss_mib(pid: int) -> float:
    """A process's peak resident memory (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


async def until(condition: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """Wait for `condition` to hold, polled every 10 ms: for a test about the order of
    events, instead of a sleep that hopes the event came."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or condition}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def foobar_process(
    module: str, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m <module> <args>` from the repository, its access log off, stopped at
    the end (SIGTERM)."""
    role = module.rpartition(".")[2].upper()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, f"FOOBAR_{role}_ACCESS_LOG": "false", **(env or {})},
    )
    try:
        yield process
    finally:
        process.terminate()
        await process.wait()


async def wait_listening(port: int) -> None:
    """Until something accepts connections on 127.0.0.1:`port` (a server in another process)."""
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError(f"nothing listens on {port}")


async def start_server(handler: Handler, config: ServerConfig | None = None) -> Server:
    server = Server(handler, config)
    await server.start("127.0.0.1", 0)
    return server


@pytest.fixture
async def servers() -> AsyncIterator[list[Server]]:
    """Servers appended here are shut down after the test."""
    started: list[Server] = []
    yield started
    for server in started:
        await server.shutdown(drain_timeout=1.0)


@pytest.fixture
async def db_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """A MariaDB primary and replica, started and watched by foobar.db's supervisor."""
    async with running_cluster(cluster_settings(tmp_path / "db")) as cluster:
        yield cluster
