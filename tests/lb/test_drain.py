"""What a keep-alive client sees when the balancer drains (SIGTERM), the second half of a
planned VRRP switch: the answer in flight comes whole with `Connection: close`; an idle
keep-alive connection is closed at once by the HTTP core (a client sending on it at that
moment must retry, as browsers and HTTP libraries do for idempotent requests)."""

from __future__ import annotations

import asyncio

import pytest

from foobar.lb.serve import LoadBalancer
from foobar.lb.settings import LbSettings
from tests.lb.conftest import Backend, address_of

pytestmark = pytest.mark.timeout(30)


async def send(writer: asyncio.StreamWriter, path: str) -> None:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: www\r\n\r\n".encode())
    await writer.drain()


async def answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


async def test_draining_answers_the_request_in_flight_with_connection_close() -> None:
    backend = await Backend("web1").start()
    lb = LoadBalancer(
        LbSettings.model_validate(
            {
                "name": "lb1",
                "access_log": False,
                "bind": "127.0.0.1:0",
                "backend": [backend.address],
                "drain_timeout": 10,
            }
        )
    )
    await lb.start()
    try:
        host, port = address_of(lb)
        idle_reader, idle_writer = await asyncio.open_connection(host, port)
        await send(idle_writer, "/first")
        head, _ = await answer(idle_reader)
        assert b"HTTP/1.1 200" in head and b"connection: close" not in head.lower()

        busy_reader, busy_writer = await asyncio.open_connection(host, port)
        await send(busy_writer, "/slow?delay=0.5")
        await asyncio.sleep(0.1)  # the request is at the backend
        stopping = asyncio.create_task(lb.stop())

        head, body = await answer(busy_reader)
        assert b"HTTP/1.1 200" in head and b'"server": "web1"' in body
        assert b"connection: close" in head.lower()
        assert await busy_reader.read() == b""  # then closed
        assert await asyncio.wait_for(idle_reader.read(), 2) == b""  # idle: closed at once
        await asyncio.wait_for(stopping, 10)
        for writer in (idle_writer, busy_writer):
            writer.close()
    finally:
        await backend.stop()
