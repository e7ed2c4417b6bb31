"""HTTP mode's fast path (requests answered in callbacks) where it has to hand over to the
task path: long answers, pooled connections the server closed, clients that leave."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from foobar.http.server import Request, Response, Server
from foobar.lb.serve import LoadBalancer
from tests.conftest import RawClient, start_server
from tests.lb.conftest import StartLb, address_of, url_of

pytestmark = pytest.mark.timeout(60)


def lb_fields(*servers: str, **backend: object) -> dict[str, object]:
    return {
        "frontends": [{"name": "default", "bind": "127.0.0.1:0", "backend": "web"}],
        "backends": [{"name": "web", "servers": list(servers), "check": None, **backend}],
    }


async def before_raw_backend(
    start_lb: StartLb,
    answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    **backend: object,
) -> tuple[LoadBalancer, asyncio.Server]:
    """A balancer in front of one plain asyncio server that runs `answer` per connection:
    for the answers a well-behaved server never gives."""
    raw = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    return await start_lb(**lb_fields(f"a=127.0.0.1:{port}", **backend)), raw


async def test_long_and_streamed_answers_are_relayed_whole(
    start_lb: StartLb, servers: list[Server]
) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB: more than the fast path holds

    async def chunks() -> AsyncIterator[bytes]:
        for n in range(5):
            await asyncio.sleep(0.01)  # arrives over several reads
            yield b"%d" % n * 10

    async def upstream(request: Request) -> Response:
        if request.path == b"/big":
            return Response(200, [], big)
        if request.path == b"/stream":
            return Response(200, [], chunks())
        return Response(200, [], b"small")

    backend = await start_server(upstream)
    servers.append(backend)
    lb = await start_lb(**lb_fields(f"a=127.0.0.1:{backend.address[1]}"))
    async with httpx.AsyncClient(base_url=url_of(lb)) as client:
        for _ in range(3):  # the first request on a connection goes the task path
            assert (await client.get("/small")).content == b"small"
            assert (await client.get("/big")).content == big
            head = await client.head("/big")  # the declared length, and no body
            assert (head.headers["content-length"], head.content) == (str(len(big)), b"")
            assert (await client.get("/stream")).content == b"".join(
                b"%d" % n * 10 for n in range(5)
            )
    server = lb.balancer.backends["web"].servers[0]
    assert server.active == 0 and server.counters.requests == 12
    assert server.pool.connections_made == 1  # handed over and back to the pool each time


async def test_a_pooled_connection_the_server_closed_is_retried_on_a_fresh_one(
    start_lb: StartLb,
) -> None:
    """The race every keep-alive pool meets: the server closes an idle connection just as
    a request is sent on it. Here the backend answers one request per connection and
    closes it, unanswered, when a second one arrives."""
    answered = 0

    async def one_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal answered
        await reader.readuntil(b"\r\n\r\n")
        answered += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    lb, backend = await before_raw_backend(start_lb, one_per_connection)
    client = await RawClient.connect(address_of(lb))
    for _ in range(4):
        await client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        status, _, body = await client.response()
        assert (status, body) == (200, b"ok")
    server = lb.balancer.backends["web"].servers[0]
    assert answered == 4 and server.pool.connections_made == 4
    assert server.counters.errors_response == 0  # a stale connection is not the server's fault
    client.close()
    backend.close()


async def test_an_answer_that_ends_with_the_close_is_relayed_whole(start_lb: StartLb) -> None:
    """No Content-Length, not chunked: the body runs until the server closes (RFC 9112
    §6.3). It used to reach the client as an aborted stream."""

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello, until close")
        writer.close()

    lb, backend = await before_raw_backend(start_lb, until_close)
    client = await RawClient.connect(address_of(lb))
    for _ in range(3):
        await client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        status, _, body = await client.response()
        assert (status, body) == (200, b"hello, until close")
    client.close()
    backend.close()


async def test_interim_answers_and_a_silent_server_on_a_warm_connection(
    start_lb: StartLb,
) -> None:
    """The second request on a connection goes the fast path; an interim 103 before the
    answer, and a server that stops answering (504 after timeout_server), both have to go
    on in the task path from there."""
    requests = 0

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            requests += 1
            if b"/silent" in head:
                continue  # never answered
            if b"/hints" in head:
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    lb, server = await before_raw_backend(start_lb, backend, timeout_server=0.3)
    client = await RawClient.connect(address_of(lb))
    for target in (b"/warm", b"/hints", b"/silent", b"/after"):
        await client.send(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % target)
        status, _, body = await client.response()
        assert (status, body) == ((504, body) if target == b"/silent" else (200, b"ok"))
    assert requests == 5  # /silent was sent twice: retried once, as nothing came back
    client.close()
    server.close()


async def test_whole_answers_that_end_their_connection_on_a_warm_one(
    start_lb: StartLb,
) -> None:
    """Answers read on the short path (whole, in one read) that must not leave their
    connection in the pool: one saying Connection: close (the server keeps it open
    anyway), one followed by a second answer in the same write (a desync: 502), and a
    body sent after an answer to HEAD (the client gets the head only)."""
    answers = {
        b"/close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"/two": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" * 2,
        b"/head": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    }

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.read(4096):  # until the balancer closes it
            target = head.split(b" ")[1]
            writer.write(answers.get(target, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))

    lb, raw = await before_raw_backend(start_lb, backend, retries=0)
    server = lb.balancer.backends["web"].servers[0]
    client = await RawClient.connect(address_of(lb))
    for method, target, status, body in (
        (b"GET", b"/warm", 200, b"ok"),
        (b"GET", b"/close", 200, b"ok"),
        (b"GET", b"/after-close", 200, b"ok"),  # on a new connection
        (b"GET", b"/two", 502, None),
        (b"GET", b"/after-two", 200, b"ok"),  # on a new connection
        (b"HEAD", b"/head", 200, b""),
        (b"GET", b"/after-head", 200, b"ok"),  # on a new connection
    ):
        await client.send(b"%s %s HTTP/1.1\r\nHost: a\r\n\r\n" % (method, target))
        if method == b"HEAD":
            async with asyncio.timeout(5):
                head = await client.reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: 2\r\n" in head
            continue
        answer = await client.response()
        assert answer[0] == status and (body is None or answer[2] == body), (target, answer)
    assert server.pool.connections_made == 4
    client.close()
    raw.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",  # a body: the task
        b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n",  # callbacks
    ],
    ids=["task path", "fast path"],
)
async def test_a_client_that_leaves_gives_its_slot_back(
    start_lb: StartLb, servers: list[Server], request_bytes: bytes
) -> None:
    async def slow(request: Request) -> Response:
        await request.body.read()
        if request.path == b"/slow":
            await asyncio.sleep(0.3)
        return Response(200, [], b"done")

    backend = await start_server(slow)
    servers.append(backend)
    lb = await start_lb(**lb_fields(f"a=127.0.0.1:{backend.address[1]},maxconn=1"))
    server = lb.balancer.backends["web"].servers[0]
    client = await RawClient.connect(address_of(lb))
    await client.send(b"GET /quick HTTP/1.1\r\nHost: a\r\n\r\n")  # readies the pool
    assert (await client.response())[2] == b"done"
    await client.send(request_bytes)
    await asyncio.sleep(0.1)
    assert server.active == 1
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()  # a reset, not a half-close: the client is gone
    await asyncio.sleep(0.5)
    assert server.active == 0
    async with httpx.AsyncClient(base_url=url_of(lb)) as other:  # the slot serves again
        assert (await other.get("/quick")).content == b"done"
