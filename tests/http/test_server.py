"""The server protocol over real loopback sockets, driven with raw bytes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from foobar.http.server import Request, Response, Server, ServerConfig
from tests.conftest import RawClient, start_server


async def echo(request: Request) -> Response:
    """Answers with what it was sent: method, target and body."""
    body = await request.body.read()
    return Response(
        200,
        [(b"Content-Type", b"text/plain"), (b"X-Method", request.method.encode())],
        request.target + b"|" + body,
    )


@pytest.fixture
async def echo_server(servers: list[Server]) -> Server:
    server = await start_server(echo)
    servers.append(server)
    return server


async def test_keep_alive_serves_many_requests_on_one_connection(echo_server: Server) -> None:
    client = await RawClient.connect(echo_server.address)
    for n in range(5):
        await client.send(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % n)
        status, headers, body = await client.response()
        assert (status, body) == (200, b"/%d|" % n)
        assert "connection" not in headers
    assert len(echo_server.state.connections) == 1
    client.close()


async def test_connection_close_is_honoured(echo_server: Server) -> None:
    client = await RawClient.connect(echo_server.address)
    await client.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    status, headers, _ = await client.response()
    assert status == 200 and headers["connection"] == "close"
    assert await client.closed()


async def test_http10_closes_unless_keep_alive_asked(echo_server: Server) -> None:
    client = await RawClient.connect(echo_server.address)
    await client.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, body = await client.response()
    assert (status, headers["connection"], body) == (200, "keep-alive", b"/a|")
    await client.send(b"GET /b HTTP/1.0\r\n\r\n")
    status, headers, body = await client.response()
    assert (status, body) == (200, b"/b|")
    assert await client.closed()


async def test_pipelined_requests_are_answered_in_order(servers: list[Server]) -> None:
    async def slow_first(request: Request) -> Response:
        # The first request takes longest: answering out of order would show.
        delay = {b"/1": 0.2, b"/2": 0.05, b"/3": 0.0}[request.target]
        await asyncio.sleep(delay)
        return Response(200, [], request.target)

    server = await start_server(slow_first)
    servers.append(server)
    client = await RawClient.connect(server.address)
    await client.send(b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % n for n in (1, 2, 3)))
    bodies = [(await client.response())[2] for _ in range(3)]
    assert bodies == [b"/1", b"/2", b"/3"]


async def test_pipelined_requests_with_bodies(echo_server: Server) -> None:
    client = await RawClient.connect(echo_server.address)
    await client.send(
        b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nfoo\r\n3\r\nbar\r\n0\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert [(await client.response())[2] for _ in range(3)] == [b"/a|hello", b"/b|foobar", b"/c|"]


async def test_request_body_in_both_framings_and_pieces(echo_server: Server) -> None:
    client = await RawClient.connect(echo_server.address)
    await client.send(b"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello")
    await asyncio.sleep(0.05)
    await client.send(b" world")
    assert (await client.response())[2] == b"/cl|hello world"
    await client.send(b"PUT /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    await asyncio.sleep(0.05)
    await client.send(b"lo\r\n6;ext=1\r\n world\r\n0\r\nTrailer-X: 1\r\n\r\n")
    assert (await client.response())[2] == b"/te|hello world"


async def test_streamed_response_is_chunked_and_sized_one_uses_content_length(
    servers: list[Server],
) -> None:
    async def stream(request: Request) -> Response:
        async def pieces() -> AsyncIterator[bytes]:
            for word in (b"one ", b"two ", b"three"):
                yield word
                await asyncio.sleep(0.01)

        headers = [(b"Content-Length", b"13")] if request.target == b"/sized" else []
        return Response(200, headers, pieces())

    server = await start_server(stream)
    servers.append(server)
    client = await RawClient.connect(server.address)
    await client.send(b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers, body = await client.response()
    assert status == 200
    assert headers["transfer-encoding"] == "chunked" and body == b"one two three"
    await client.send(b"GET /sized HTTP/1.1\r\nHost: a\r\n\r\n")
    _, headers, body = await client.response()
    assert headers["content-length"] == "13" and "transfer-encoding" not in headers
    assert body == b"one two three"
    # HTTP/1.0 cannot take chunked: the body ends with the connection.
    await client.send(b"GET /chunked HTTP/1.0\r\n\r\n")
    raw = await asyncio.wait_for(client.reader.read(), 5)
    assert raw.endswith(b"\r\n\r\none two three") and b"chunked" not in raw


async def test_no_body_for_head_204_304_and_1xx(servers: list[Server]) -> None:
    async def handler(request: Request) -> Response:
        status = int(request.target[1:] or 200)
        return Response(status, [(b"ETag", b'"x"')], b"a body that must not be sent")

    server = await start_server(handler)
    servers.append(server)
    client = await RawClient.connect(server.address)
    await client.send(b"HEAD /200 HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers = await client.head_only()
    assert status == 200 and headers["content-length"] == "28"
    for code in (204, 304):
        await client.send(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % code)
        status, headers = await client.head_only()
        assert status == code and "transfer-encoding" not in headers
        assert code == 304 or "content-length" not in headers
    # had any body bytes been sent, this response would not parse
    await client.send(b"GET /200 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await client.response())[2] == b"a body that must not be sent"


async def test_expect_100_continue(echo_server: Server) -> None:
    client = await RawClient.connect(echo_server.address)
    await client.send(
        b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await client.send(b"data")
    assert (await client.response())[2] == b"/up|data"


async def test_expect_100_continue_refused_without_reading(servers: list[Server]) -> None:
    async def refuse(request: Request) -> Response:
        return Response(401, [], b"no")

    server = await start_server(refuse)
    servers.append(server)
    client = await RawClient.connect(server.address)
    await client.send(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    status, headers, _ = await client.response()
    # no 100 was sent (the response would start with it), and since the client may or
    # may not send its body now, the connection cannot be reused
    assert status == 401 and headers["connection"] == "close"
    assert await client.closed()


async def test_body_over_limit_is_413_before_100_continue(servers: list[Server]) -> None:
    server = await start_server(echo, ServerConfig(max_body_bytes=10))
    servers.append(server)
    client = await RawClient.connect(server.address)
    await client.send(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n"
    )
    status, headers, _ = await client.response()
    assert status == 413 and headers["connection"] == "close"
    assert await client.closed()
    client = await RawClient.connect(server.address)
    await client.send(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"
    )
    status, headers, _ = await client.response()
    assert status == 413 and headers["connection"] == "close"
    assert await client.closed()


REJECTED = {
    "malformed request line": (b"GET /\r\nHost: a\r\n\r\n", 400),
    "bad method": (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "malformed header": (b"GET / HTTP/1.1\r\nHost a\r\n\r\n", 400),
    "content-length with transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "two content-lengths": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        400,
    ),
    "content-length list": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd",
        400,
    ),
    "transfer-encoding not ending in chunked": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
        400,
    ),
    "transfer-encoding unknown": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\nabc",
        400,
    ),
    "two transfer-encodings": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        400,
    ),
    "bare LF": (b"GET / HTTP/1.1\nHost: a\n\n", 400),
    "bare LF in headers": (b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400),
    "whitespace before colon": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n", 400),
    "chunk size bare LF": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
        400,
    ),
    "NUL in header": (b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n", 400),
    "HTTP/2.0 in an HTTP/1 request line": (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    "HTTP/1.2": (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
    "HTTP/3.0": (b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505),
    "header block too large": (
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        431,
    ),
    "too many headers": (
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %d\r\n" % (n, n) for n in range(2000)) + b"\r\n",
        431,
    ),
}


@pytest.mark.parametrize("name", list(REJECTED))
async def test_rejected_with_status_and_closed(servers: list[Server], name: str) -> None:
    seen: list[bytes] = []

    async def recording(request: Request) -> Response:
        seen.append(request.target)
        return await echo(request)

    echo_server = await start_server(recording)
    servers.append(echo_server)
    data, expected = REJECTED[name]
    client = await RawClient.connect(echo_server.address)
    # a good request first: the bad one must not poison what came before it
    await client.send(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n" + data)
    assert (await client.response())[2] == b"/first|"
    status, headers, _ = await client.response()
    assert status == expected
    assert headers["connection"] == "close"
    assert await client.closed()
    assert seen == [b"/first"]  # the refused request never reached the handler


async def test_header_without_end_is_431_not_unbounded(echo_server: Server) -> None:
    client = await RawClient.connect(echo_server.address)
    await client.send(b"GET / HTTP/1.1\r\nX-Endless: ")
    for _ in range(40):  # 40 KiB of one header value, never finished
        with contextlib.suppress(ConnectionError):
            await client.send(b"a" * 1024)
        await asyncio.sleep(0.005)
    status, _, _ = await client.response()
    assert status == 431
    assert await client.closed()


async def test_incomplete_head_gets_408_and_close(servers: list[Server]) -> None:
    server = await start_server(echo, ServerConfig(request_timeout=0.3))
    servers.append(server)
    client = await RawClient.connect(server.address)
    await client.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
    # trickling bytes does not extend the deadline (slowloris)
    for _ in range(2):
        await asyncio.sleep(0.1)
        await client.send(b"X: y\r\n")
    status, headers, _ = await client.response(timeout=2)
    assert status == 408 and headers["connection"] == "close"
    assert await client.closed()


async def test_slow_body_gets_408(servers: list[Server]) -> None:
    server = await start_server(echo, ServerConfig(body_timeout=0.3))
    servers.append(server)
    client = await RawClient.connect(server.address)
    await client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    status, _, _ = await client.response(timeout=2)
    assert status == 408
    assert await client.closed()


async def test_a_trickled_body_is_cut_at_the_minimum_rate(servers: list[Server]) -> None:
    """One byte every 50 ms never trips body_timeout (0.5 s between reads); at 100
    bytes/s minimum after it, the body must be done within 0.5 s + bytes/100 s of waiting:
    the trickle (20 bytes/s) falls behind after ~0.6 s."""
    server = await start_server(echo, ServerConfig(body_timeout=0.5, body_min_rate=100))
    servers.append(server)
    client = await RawClient.connect(server.address)
    await client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = asyncio.ensure_future(client.response(timeout=5))
    for _ in range(100):  # 5 s of trickle at most
        if response.done():
            break
        with contextlib.suppress(ConnectionError):
            await client.send(b"x")
        await asyncio.sleep(0.05)
    status, _, body = await response
    assert status == 408 and b"slower than 100 bytes/s" in body
    assert 0.5 < loop.time() - started < 2.0


async def test_a_steady_body_at_the_minimum_rate_is_read_whole(servers: list[Server]) -> None:
    server = await start_server(echo, ServerConfig(body_timeout=0.3, body_min_rate=100))
    servers.append(server)
    client = await RawClient.connect(server.address)
    await client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 200\r\n\r\n")
    for _ in range(10):  # 200 bytes in 0.5 s: 400 bytes/s
        await client.send(b"y" * 20)
        await asyncio.sleep(0.05)
    status, _, body = await client.response(timeout=2)
    assert (status, body) == (200, b"/|" + b"y" * 200)


async def test_idle_keep_alive_connection_closes_quietly(servers: list[Server]) -> None:
    server = await start_server(echo, ServerConfig(keepalive_timeout=0.3))
    servers.append(server)
    client = await RawClient.connect(server.address)
    await client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await client.response()
    loop = asyncio.get_running_loop()
    started = loop.time()
    rest = await asyncio.wait_for(client.reader.read(), 3)
    assert rest == b""  # closed without a 408
    assert 0.25 < loop.time() - started < 2


async def test_new_connection_that_sends_nothing_closes_quietly(servers: list[Server]) -> None:
    server = await start_server(echo, ServerConfig(request_timeout=0.3))
    servers.append(server)
    client = await RawClient.connect(server.address)
    assert await asyncio.wait_for(client.reader.read(), 3) == b""


async def test_handler_error_is_500_without_traceback(servers: list[Server]) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("secret internals")

    server = await start_server(broken)
    servers.append(server)
    client = await RawClient.connect(server.address)
    await client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    status, _, body = await client.response()
    assert status == 500
    assert b"secret" not in body and b"Traceback" not in body


async def test_unread_small_body_is_discarded_and_connection_kept(servers: list[Server]) -> None:
    async def ignore_body(request: Request) -> Response:
        return Response(200, [], b"ok")

    server = await start_server(ignore_body)
    servers.append(server)
    client = await RawClient.connect(server.address)
    await client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    await client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [(await client.response())[0] for _ in range(2)] == [200, 200]


async def test_upgrade_is_ignored_and_connect_refused(echo_server: Server) -> None:
    client = await RawClient.connect(echo_server.address)
    await client.send(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert [(await client.response())[2] for _ in range(2)] == [b"/ws|", b"/after|"]
    await client.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    status, _, _ = await client.response()
    assert status == 405
    assert await client.closed()


async def test_graceful_shutdown_finishes_in_flight_and_closes_idle() -> None:
    release = asyncio.Event()

    async def waits(request: Request) -> Response:
        await release.wait()
        return Response(200, [], b"finished")

    server = await start_server(waits)
    address = server.address
    busy = await RawClient.connect(address)
    idle = await RawClient.connect(address)
    await idle.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    release.set()
    await idle.response()
    release.clear()
    await busy.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.05)
    shutdown = asyncio.create_task(server.shutdown(drain_timeout=5))
    assert await idle.closed(timeout=2)
    with pytest.raises(OSError):
        await RawClient.connect(address)  # no longer accepting
    assert not shutdown.done()
    release.set()
    status, headers, body = await busy.response()
    assert (status, body, headers["connection"]) == (200, b"finished", "close")
    await asyncio.wait_for(shutdown, 2)


async def test_shutdown_cuts_what_outlives_the_drain_timeout() -> None:
    async def never(request: Request) -> Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    server = await start_server(never)
    client = await RawClient.connect(server.address)
    await client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.05)
    await asyncio.wait_for(server.shutdown(drain_timeout=0.2), 2)
    assert await client.closed()


async def test_client_that_never_reads_holds_the_writer_then_is_cut(servers: list[Server]) -> None:
    produced = 0

    async def firehose(request: Request) -> Response:
        async def forever() -> AsyncIterator[bytes]:
            nonlocal produced
            for _ in range(100_000):  # bounded: 6.4 GB if backpressure failed
                produced += 1
                yield b"z" * 65536

        return Response(200, [], forever())

    server = await start_server(firehose, ServerConfig(send_timeout=0.3))
    servers.append(server)
    client = await RawClient.connect(server.address)
    await client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(1.0)  # never read: the kernel buffers fill, then ours
    # the producer was held at the high-water mark, not run ahead into memory
    assert produced < 200
    await asyncio.sleep(0.2)
    assert not server.state.connections  # cut after send_timeout without progress


async def test_header_lookup_ignores_case_and_takes_the_last_value(servers: list[Server]) -> None:
    async def report(request: Request) -> Response:
        found = [request.header(name) or b"-" for name in (b"x-a", b"x-b", b"host", b"x-none")]
        return Response(200, [], b" ".join(found))

    server = await start_server(report)
    servers.append(server)
    client = await RawClient.connect(server.address)
    await client.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-b: 2\r\nX-a: 3\r\n\r\n")
    status, _, body = await client.response()
    assert (status, body) == (200, b"3 2 h -")
    client.close()
