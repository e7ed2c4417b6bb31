"""The server's fast path (`fast_handler`): requests answered from callbacks, handed to the
task, or declined, over real sockets. What must hold is what holds for the task path:
order, framing, keep-alive, half-close, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from foobar.http.server import Request, Response, Server, ServerConfig
from tests.conftest import RawClient


async def task_handler(request: Request) -> Response:
    """The ordinary handler: requests the fast handler declined or handed over end here."""
    body = await request.body.read()
    if request.target.endswith(b"-slow"):
        await asyncio.sleep(0.8)
    return Response(200, [(b"X-Path", b"task")], request.target + b"|" + body)


class Later:
    """A fast handler that answers each request it takes after `delay`, from a timer
    callback (as a proxy answers from its upstream's callback), or hands it over."""

    def __init__(self, delay: float = 0.05, hand_over: bool = False) -> None:
        self.delay = delay
        self.hand_over = hand_over
        self.taken: list[bytes] = []

    def __call__(self, request: Request) -> bool:
        if request.target.startswith(b"/decline"):
            return False
        self.taken.append(request.target)
        loop = asyncio.get_running_loop()
        loop.call_later(self.delay, self.answer, request)
        return True

    def answer(self, request: Request) -> None:
        if self.hand_over:
            request.continue_in_task(self.finish_in_task)
            return
        request.respond(Response(200, [(b"X-Path", b"fast"), (b"Content-Length", b"4")], b"fast"))

    async def finish_in_task(self, request: Request) -> Response:
        await asyncio.sleep(0.01)
        return Response(200, [(b"X-Path", b"handed")], request.target)


async def start(servers: list[Server], fast: Callable[[Request], bool]) -> Server:
    server = Server(task_handler, fast_handler=fast)
    await server.start("127.0.0.1", 0)
    servers.append(server)
    return server


async def test_answered_from_a_callback_with_keep_alive(servers: list[Server]) -> None:
    fast = Later()
    server = await start(servers, fast)
    client = await connected(server)
    for _ in range(3):
        await client.send(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, body = await client.response()
        assert (status, headers["x-path"], body) == (200, "fast", b"fast")
        assert "connection" not in headers and "date" in headers
    assert fast.taken == [b"/a"] * 3
    client.close()


async def connected(server: Server) -> RawClient:
    """A connection whose task is already waiting: the very first request on a new
    connection can arrive before its task starts, and then goes to the task."""
    client = await RawClient.connect(server.address)
    await client.send(b"GET /decline HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await client.response())[2] == b"/decline|"
    return client


async def test_head_keeps_the_declared_length_and_sends_no_body(servers: list[Server]) -> None:
    fast = Later()
    server = await start(servers, fast)
    client = await connected(server)
    await client.send(b"HEAD /a HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers = await client.head_only()
    assert (status, headers["content-length"], headers["x-path"]) == (200, "4", "fast")
    await client.send(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    status, _, body = await client.response()  # nothing was sent after the head
    assert (status, body) == (200, b"fast")
    assert fast.taken == [b"/a", b"/b"]


async def test_pipelined_requests_wait_for_the_one_in_callbacks(servers: list[Server]) -> None:
    server = await start(servers, Later(delay=0.2))
    client = await connected(server)
    await client.send(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /decline HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    answers = [await client.response() for _ in range(3)]
    assert [(headers["x-path"], body) for _, headers, body in answers] == [
        ("fast", b"fast"),
        ("task", b"/2|abc"),
        ("task", b"/decline|"),
    ]


async def test_handed_over_requests_keep_their_order(servers: list[Server]) -> None:
    fast = Later(delay=0.05, hand_over=True)
    server = await start(servers, fast)
    client = await connected(server)
    for n in range(3):  # the later ones arrive while the first is in the task: they queue
        await client.send(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % n)
    answers = [await client.response() for _ in range(3)]
    assert [body.rstrip(b"|") for _, _, body in answers] == [b"/0", b"/1", b"/2"]
    assert answers[0][1]["x-path"] == "handed" and fast.taken[0] == b"/0"
    await client.send(b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n")  # idle again: callbacks
    assert (await client.response())[1]["x-path"] == "handed"


async def test_connection_close_and_http10_end_after_the_answer(servers: list[Server]) -> None:
    server = await start(servers, Later())
    for request in (
        b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET /a HTTP/1.0\r\n\r\n",
    ):
        client = await connected(server)
        await client.send(request)
        status, headers, body = await client.response()
        assert (status, headers["connection"], body) == (200, "close", b"fast")
        assert await client.closed()


async def test_a_half_closed_client_still_gets_its_answer(servers: list[Server]) -> None:
    fast = Later(delay=0.1)
    server = await start(servers, fast)
    client = await connected(server)
    await client.send(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    client.writer.write_eof()
    status, _, body = await client.response()
    assert (status, body, fast.taken) == (200, b"fast", [b"/a"])
    assert await client.closed()


async def test_a_client_that_left_is_not_answered_and_nothing_breaks(
    servers: list[Server],
) -> None:
    fast = Later(delay=0.1)
    server = await start(servers, fast)
    client = await connected(server)
    await client.send(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.02)
    assert fast.taken == [b"/a"]
    client.writer.transport.abort()
    await asyncio.sleep(0.2)  # the answer comes for a connection that is gone
    assert not server.state.connections
    other = await connected(server)
    await other.send(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await other.response())[2] == b"fast"


async def test_a_failing_fast_handler_answers_500_and_closes(servers: list[Server]) -> None:
    def broken(request: Request) -> bool:
        if request.target == b"/decline":
            return False
        raise ValueError("bug")

    server = await start(servers, broken)
    client = await connected(server)
    await client.send(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /decline HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers, _ = await client.response()
    assert (status, headers["connection"]) == (500, "close")
    assert await client.closed()


async def test_graceful_shutdown_waits_for_the_answer(servers: list[Server]) -> None:
    server = await start(servers, Later(delay=0.2))
    client = await connected(server)
    await client.send(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.05)
    shutdown = asyncio.create_task(server.shutdown(drain_timeout=5))
    status, headers, body = await client.response()
    assert (status, headers["connection"], body) == (200, "close", b"fast")
    await shutdown


async def test_keep_alive_idle_time_counts_from_the_answer(servers: list[Server]) -> None:
    """An answer slower than keepalive_timeout must not make the connection look idle
    since the request: the idle time counts from the end of the answer (nginx's and
    HAProxy's keep-alive timeouts do), on both paths, and it still ends the connection."""
    fast = Later(delay=0.8)
    server = Server(task_handler, ServerConfig(keepalive_timeout=0.5), fast_handler=fast)
    await server.start("127.0.0.1", 0)
    servers.append(server)
    client = await connected(server)
    for target in (b"/slow", b"/decline-slow"):  # callbacks, then the task
        await client.send(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % target)
        assert (await client.response())[0] == 200
        await asyncio.sleep(0.1)  # well inside the keep-alive time after the answer
        await client.send(b"GET /decline HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await client.response())[2] == b"/decline|"
    assert await client.closed(timeout=2)  # and idle after that, it ends


def test_the_connection_phases_form_one_machine() -> None:
    """Every phase is reachable from IDLE, CLOSING is the only end, and the fast path
    cannot skip to the task path without going through IDLE (its head queued again)."""
    from foobar.http.server import _TRANSITIONS, CLOSING, DIRECT, IDLE, TASK

    reachable, frontier = {IDLE}, [IDLE]
    while frontier:
        for following in _TRANSITIONS[frontier.pop()]:
            if following not in reachable:
                reachable.add(following)
                frontier.append(following)
    assert reachable == {IDLE, DIRECT, TASK, CLOSING}
    assert [phase for phase, nexts in _TRANSITIONS.items() if not nexts] == [CLOSING]
    assert TASK not in _TRANSITIONS[DIRECT]
