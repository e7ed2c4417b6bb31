"""The upstream pool against real servers on loopback: ours, and raw ones that misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from foobar.http.client import PoolConfig, UpstreamPool
from foobar.http.errors import (
    ConnectTimeout,
    ReadTimeout,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamError,
)
from foobar.http.server import Request, Response, Server
from tests.conftest import start_server

HOST = [(b"Host", b"upstream")]


async def echo(request: Request) -> Response:
    body = await request.body.read()
    return Response(200, [(b"X-Method", request.method.encode())], request.target + b"|" + body)


@pytest.fixture
async def upstream(servers: list[Server]) -> Server:
    server = await start_server(echo)
    servers.append(server)
    return server


@pytest.fixture
async def pools() -> AsyncIterator[list[UpstreamPool]]:
    made: list[UpstreamPool] = []
    yield made
    for pool in made:
        await pool.close()


def pool_for(pools: list[UpstreamPool], port: int, **config: float) -> UpstreamPool:
    pool = UpstreamPool("127.0.0.1", port, PoolConfig(**config))  # type: ignore[arg-type]
    pools.append(pool)
    return pool


async def test_one_connection_carries_many_requests(
    upstream: Server, pools: list[UpstreamPool]
) -> None:
    pool = pool_for(pools, upstream.address[1])
    for n in range(50):
        response = await pool.request("GET", b"/%d" % n, HOST)
        assert (response.status, await response.read()) == (200, b"/%d|" % n)
    assert pool.connections_made == 1
    assert len(upstream.state.connections) == 1
    assert pool.idle_count == 1


async def test_bodies_both_framings_and_head(upstream: Server, pools: list[UpstreamPool]) -> None:
    pool = pool_for(pools, upstream.address[1])
    response = await pool.request("POST", b"/bytes", HOST, b"hello")
    assert await response.read() == b"/bytes|hello"

    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"a", b"b", b"c"):
            yield piece

    response = await pool.request("PUT", b"/chunked", HOST, pieces())
    assert await response.read() == b"/chunked|abc"
    response = await pool.request("POST", b"/sized", HOST, pieces(), content_length=3)
    assert await response.read() == b"/sized|abc"
    response = await pool.request("HEAD", b"/head", HOST)
    assert response.header(b"content-length") == b"6" and await response.read() == b""
    response = await pool.request("GET", b"/after", HOST)
    assert await response.read() == b"/after|"
    assert pool.connections_made == 1


async def test_concurrent_requests_use_separate_connections(
    servers: list[Server], pools: list[UpstreamPool]
) -> None:
    """The upstream answers none of the five until all five are in: requests queued on
    one connection would never all arrive (and time out)."""
    arrived: list[tuple[str, int]] = []
    all_in = asyncio.Event()

    async def together(request: Request) -> Response:
        arrived.append(request.client)
        if len(arrived) == 5:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), 5)
        return Response(200, [], request.target)

    server = await start_server(together)
    servers.append(server)
    pool = pool_for(pools, server.address[1])

    async def get(n: int) -> bytes:
        return await (await pool.request("GET", b"/%d" % n, HOST)).read()

    assert await asyncio.gather(*(get(n) for n in range(5))) == [b"/%d" % n for n in range(5)]
    assert len(set(arrived)) == 5  # five client ports: five connections
    assert pool.connections_made == 5 and pool.idle_count == 5


async def test_idle_cap_and_idle_timeout(upstream: Server, pools: list[UpstreamPool]) -> None:
    pool = pool_for(pools, upstream.address[1], max_idle=2, idle_timeout=0.2)
    responses = await asyncio.gather(*(pool.request("GET", b"/", HOST) for _ in range(4)))
    for response in responses:
        await response.read()
    assert pool.idle_count == 2
    await asyncio.sleep(0.4)
    assert pool.idle_count == 0


async def test_abandoned_body_closes_the_connection(
    upstream: Server, pools: list[UpstreamPool]
) -> None:
    pool = pool_for(pools, upstream.address[1])
    response = await pool.request("GET", b"/", HOST)
    await response.aclose()
    assert pool.idle_count == 0
    await (await pool.request("GET", b"/", HOST)).read()
    assert pool.connections_made == 2


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def raw_upstream(script: Script) -> tuple[asyncio.Server, int]:
    """A hand-written upstream: `script(reader, writer, connection_number)`."""
    count = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        try:
            await script(reader, writer, count)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    if b"Content-Length: " in head:
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    return head


async def closes_after_first(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int
) -> None:
    """Answers one request, then closes on the next one without a word: what a server
    whose keep-alive timeout ran out does when the request crosses its close."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()
    await read_request(reader)
    writer.transport.abort()


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
async def test_stale_pooled_connection_is_retried_for_idempotent(
    pools: list[UpstreamPool], method: str
) -> None:
    server, port = await raw_upstream(closes_after_first)
    async with server:
        pool = pool_for(pools, port)
        await (await pool.request("GET", b"/", HOST)).read()
        response = await pool.request(method, b"/again", HOST)
        assert response.status == 200
        assert pool.connections_made == 2


async def test_stale_pooled_connection_is_not_retried_for_post(pools: list[UpstreamPool]) -> None:
    server, port = await raw_upstream(closes_after_first)
    async with server:
        pool = pool_for(pools, port)
        await (await pool.request("GET", b"/", HOST)).read()
        with pytest.raises(UpstreamClosed) as caught:
            await pool.request("POST", b"/order", HOST, b"pay once")
        assert caught.value.status == 502 and not caught.value.response_started
        assert pool.connections_made == 1


async def test_refused_is_502_connect_error(pools: list[UpstreamPool]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    pool = pool_for(pools, port)
    with pytest.raises(UpstreamConnectError) as caught:
        await pool.request("GET", b"/", HOST)
    assert caught.value.status == 502


async def test_silent_upstream_is_504_read_timeout(pools: list[UpstreamPool]) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    server, port = await raw_upstream(silent)
    async with server:
        pool = pool_for(pools, port, read_timeout=0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ReadTimeout) as caught:
            await pool.request("GET", b"/", HOST)
        assert caught.value.status == 504
        assert loop.time() - started < 1


async def test_upstream_stalling_mid_body_is_504(pools: list[UpstreamPool]) -> None:
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(5)

    server, port = await raw_upstream(stalls)
    async with server:
        pool = pool_for(pools, port, read_timeout=0.2)
        response = await pool.request("GET", b"/", HOST)
        with pytest.raises(ReadTimeout) as caught:
            await response.read()
        assert caught.value.response_started
        assert pool.idle_count == 0


async def test_reset_mid_body_is_502_with_response_started(pools: list[UpstreamPool]) -> None:
    async def resets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        writer.transport.abort()

    server, port = await raw_upstream(resets)
    async with server:
        pool = pool_for(pools, port)
        response = await pool.request("GET", b"/", HOST)
        with pytest.raises(UpstreamClosed) as caught:
            await response.read()
        assert caught.value.status == 502 and caught.value.response_started


async def test_body_without_length_ends_with_the_close(pools: list[UpstreamPool]) -> None:
    """RFC 9112 §6.3: neither Content-Length nor chunked, the body runs to the close; a
    chunked body cut short by the close is still an error."""

    async def until_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await read_request(reader)
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello, ")
            await writer.drain()
            writer.write(b"until the close")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello")

    server, port = await raw_upstream(until_close)
    async with server:
        pool = pool_for(pools, port)
        response = await pool.request("GET", b"/", HOST)
        assert await response.read() == b"hello, until the close"
        cut = await pool.request("GET", b"/", HOST)
        with pytest.raises(UpstreamClosed):
            await cut.read()
        assert pool.idle_count == 0  # neither connection can carry another request


async def test_invalid_response_is_502(pools: list[UpstreamPool]) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
        await writer.drain()
        await asyncio.sleep(1)

    server, port = await raw_upstream(garbage)
    async with server:
        pool = pool_for(pools, port)
        with pytest.raises(UpstreamError) as caught:
            await pool.request("GET", b"/", HOST)
        assert caught.value.status == 502


async def test_interim_100_is_skipped(pools: list[UpstreamPool]) -> None:
    async def continues(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.5)

    server, port = await raw_upstream(continues)
    async with server:
        pool = pool_for(pools, port)
        response = await pool.request("POST", b"/", HOST, b"x")
        assert response.status == 201


async def test_connect_timeout_is_504(pools: list[UpstreamPool]) -> None:
    # A listener whose accept queue is full drops new SYNs: the connect hangs, on
    # loopback, with no traffic leaving the machine.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.1)
        pool = pool_for(pools, port, connect_timeout=0.3)
        with pytest.raises(ConnectTimeout) as caught:
            await pool.request("GET", b"/", HOST)
        assert caught.value.status == 504 and isinstance(caught.value, UpstreamConnectError)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
