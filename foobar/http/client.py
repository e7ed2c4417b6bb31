"""The upstream client: a pool of keep-alive connections to one upstream address.

    pool = UpstreamPool("10.0.0.2", 8000)
    response = await pool.request("GET", b"/api/posts", [(b"Host", b"www.foobar.com")])
    async for chunk in response:   # or: await response.read()
        ...
    # the connection went back to the pool when the body ended

A request without a body can also be sent and answered with no task at all, for proxies
answering in the protocols' callbacks (the fast path, see server.py and forward.py):

    pool.send_now(waiter, head)
    # waiter.answer_arrived(status, raw_head, body): the whole answer arrived, the
    #     connection is back in the pool
    # waiter.must_wait(connection or None): it must be read on in a task, with
    #     await pool.request(..., sent=connection)   (None: nothing was sent, no idle one)

Like nginx's `keepalive` upstream block: at most `max_idle` idle connections are kept, each
for `idle_timeout`. A pooled connection the server closed while it sat idle is found out
when the request fails before any response byte; an idempotent request with a replayable
body is then sent once more on a fresh connection (nginx and Go's net/http do the same),
anything else fails with `UpstreamClosed`. Failures are mapped into the FoobarError tree:
refused or unreachable -> `UpstreamConnectError`, reset -> `UpstreamClosed`, too slow ->
`ConnectTimeout` / `ReadTimeout` (504).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl as ssl_module
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final, Protocol, cast

from foobar.http import headers as hdrs
from foobar.http import limits
from foobar.http.errors import (
    ConnectTimeout,
    HTTPError,
    ProtocolError,
    ReadTimeout,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
)
from foobar.http.flow import EVENT_SIZE, FlowControlled
from foobar.http.parser import END, Event, ResponseHead, ResponseParser

log = logging.getLogger("foobar.http.client")

# RFC 9110 §9.2.2.
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
# Request fields the client owns, like the server owns its response framing.
_FRAMING_FIELDS: Final = frozenset(
    {b"connection", b"transfer-encoding", b"content-length", b"keep-alive"}
)
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})


class AnswerWaiter(Protocol):
    """Who waits for the answer to a request `send_now()` sent (forward.ProxyExchange)."""

    def answer_arrived(self, status: int, raw_head: bytes, body: bytes) -> None: ...

    def must_wait(self, connection: UpstreamConnection | None) -> None: ...


@dataclass(frozen=True, slots=True)
class PoolConfig:
    connect_timeout: float = limits.CONNECT_TIMEOUT
    read_timeout: float = limits.READ_TIMEOUT
    max_idle: int = limits.MAX_IDLE_CONNECTIONS
    idle_timeout: float = limits.POOL_IDLE_TIMEOUT
    max_header_bytes: int = limits.MAX_HEADER_BYTES
    high_water: int = limits.HIGH_WATER
    low_water: int = limits.LOW_WATER


class UpstreamConnection(FlowControlled):
    """One connection to an upstream server, used for one request at a time."""

    __slots__ = (
        "_timer",
        "error",
        "idle_since",
        "last_read",
        "parser",
        "pool",
        "response_started",
        "reusable",
        "waiter",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        config = pool.config
        super().__init__(config.high_water, config.low_water)
        self.pool = pool
        self.parser = ResponseParser(config.max_header_bytes)
        self.error: UpstreamError | None = None
        self.response_started = False
        self.reusable = True
        # loop.time() of its last answer's end, when it went back to the pool
        self.idle_since: float | None = None
        # Who is told instead of a task, while a request on it is answered in callbacks.
        self.waiter: AnswerWaiter | None = None
        self._timer: asyncio.TimerHandle | None = None
        # loop.time() of the last read, or of the request's start: the read timeout
        # counts from it
        self.last_read = self.loop.time()

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        if self.idle_since is not None:
            # Bytes on an idle connection (a late 408, garbage): it cannot be trusted.
            self.reusable = False
            self.close()
            return
        self.response_started = True
        waiter = self.waiter
        if waiter is not None and not self.events:
            whole = self.parser.whole(data)  # the common answer, read on a short path
            if whole is not None:
                self.waiter = None
                status, answer_head, answer_body, keep_alive = whole
                self.pool.release(self, keep_alive)
                waiter.answer_arrived(status, answer_head, answer_body)
                return
        try:
            events = self.parser.feed(data)
        except ProtocolError as exc:
            # Nothing of what came before the fault is relayed either: a server that
            # sends garbage, even after a complete answer, has lost the framing.
            self._fail(UpstreamProtocolError(f"invalid response from upstream: {exc}"))
            return
        in_message = self.parser.in_message
        if (len(events) > 3 or in_message) and _after_final_answer(events, in_message):
            self._fail(UpstreamProtocolError("upstream sent bytes after its response"))
            return
        if waiter is None:
            if events:
                self.queue(events)
            return
        if END not in events:
            self.events.extend(events)  # counted in `buffered` only if a task is to read them
            if sum(len(event) for event in self.events if isinstance(event, bytes)) > (
                limits.DIRECT_RESPONSE_BYTES
            ):
                self._hand_to_task()
            return
        # A message ended while a request is answered in callbacks: pass the final answer
        # on whole, or hand it to a task (an interim 1xx).
        if self.events:
            events = [*self.events, *events]
            self.events.clear()
        head = events[0]
        if not isinstance(head, ResponseHead) or head.status < 200 or head.status == 101:
            self.events.extend(events)
            self._hand_to_task()
            return
        self.waiter = None
        self.pool.release(self, head.keep_alive and not self.parser.surplus)
        # between the head and its END: the body, most often one piece
        body = events[1] if len(events) == 3 else b"".join(cast(list[bytes], events[1:-1]))
        waiter.answer_arrived(head.status, head.raw, body)  # type: ignore[arg-type]

    def _hand_to_task(self) -> None:
        waiter, self.waiter = self.waiter, None
        assert waiter is not None
        for event in self.events:  # from now on they count for flow control
            self.buffered += len(event) if isinstance(event, bytes) else EVENT_SIZE
        waiter.must_wait(self)

    def eof_received(self) -> bool | None:
        self.closed = True
        self.reusable = False
        end = self.parser.finish()  # a body delimited by the close is complete now
        if end:
            self.queue(end)  # wakes the reader
        else:
            self.wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self.wake()
        self.wake_drain(UpstreamClosed("upstream closed the connection"))
        if self._timer is not None:
            self._timer.cancel()
        self.pool.forget(self)

    def wake(self) -> None:
        if self.waiter is not None:
            self._hand_to_task()  # a failure or a close: the task path handles it
        else:
            super().wake()

    def _fail(self, error: UpstreamError) -> None:
        """The connection is broken: its reader gets `error` before anything queued."""
        error.response_started = self.response_started
        self.events.clear()
        self.buffered = 0
        self.error = error
        self.reusable = False
        self.close()
        self.wake()

    async def next_event(self) -> Event:
        while not self.events:
            if self.error is not None:
                raise self.error
            if self.closed:
                error = UpstreamClosed("upstream closed the connection")
                error.response_started = self.response_started
                raise error
            self.arm_read_timeout()
            await self.wait_for_event()
        return self.pop()

    def started_request(self, method: str) -> None:
        """The read timeout counts from here: the last read was for an earlier request.
        (`UpstreamPool.send_now` does the same inline.)"""
        if method == "HEAD":
            self.parser.expect_head_response()
        self.last_read = self.loop.time()
        self.response_started = False
        if self._timer is None:  # arm_read_timeout(), inline: this runs per request
            self._timer = self.loop.call_at(
                self.last_read + self.pool.config.read_timeout, self._on_timer
            )

    def arm_read_timeout(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_at(
                self.last_read + self.pool.config.read_timeout, self._on_timer
            )

    def _on_timer(self) -> None:
        self._timer = None
        if self.event_waiter is None and self.waiter is None:
            return
        deadline = self.last_read + self.pool.config.read_timeout
        if self.loop.time() < deadline:
            self.arm_read_timeout()
            return
        self._fail(
            ReadTimeout(f"upstream {self.pool.name} silent for {self.pool.config.read_timeout}s")
        )

    async def write(self, *parts: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise UpstreamClosed("upstream connection closed while sending")
        self.transport.writelines(parts)
        await self.drain()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _after_final_answer(events: list[Event], in_message: bool) -> bool:
    """Do `events` (and a message begun after them, `in_message`) go on after a final,
    non-1xx, response ended? A server sends one answer per request; more is a desync
    (response splitting), and what came with it is not to be trusted or relayed."""
    final = False
    for index, event in enumerate(events):
        if isinstance(event, ResponseHead):
            final = event.status >= 200
        elif event is END and final:
            return index + 1 < len(events) or in_message
    return False


class UpstreamResponse:
    """An upstream's response: the head at once, the body as a stream. Reading the body to
    its end hands the connection back to the pool; `aclose()` before that closes it."""

    def __init__(
        self,
        connection: UpstreamConnection,
        head: ResponseHead,
        sender: asyncio.Task[None] | None,
    ) -> None:
        self.head = head
        self._connection: UpstreamConnection | None = connection
        self._sender = sender

    @property
    def status(self) -> int:
        return self.head.status

    @property
    def headers(self) -> hdrs.Headers:
        return self.head.headers

    def header(self, name: bytes) -> bytes | None:
        return hdrs.get(self.head.headers, name)

    async def next_chunk(self) -> bytes | None:
        connection = self._connection
        if connection is None:
            return None
        try:
            event = await connection.next_event()
        except BaseException:
            await self.aclose()
            raise
        if event is END:
            self._release()
            return None
        assert isinstance(event, bytes)
        return event

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    def take_complete_body(self) -> bytes | None:
        """The whole body, when it has already arrived (a small response comes in the
        same read as its head): the connection goes back to the pool at once, and the
        body can go out with the head in one write. None while more is to come."""
        connection = self._connection
        if connection is None:
            return None
        try:
            end = connection.events.index(END)
        except ValueError:
            return None
        chunks = [connection.pop() for _ in range(end)]
        connection.pop()  # END
        self._release()
        return b"".join(chunk for chunk in chunks if isinstance(chunk, bytes))

    def _release(self) -> None:
        connection, self._connection = self._connection, None
        assert connection is not None
        reusable = self.head.keep_alive and not connection.parser.surplus
        if self._sender is not None:
            if not self._sender.done():
                reusable = False  # the server answered before taking the whole body
                self._sender.cancel()
            elif self._sender.cancelled() or self._sender.exception() is not None:
                reusable = False
        connection.pool.release(connection, reusable)

    async def aclose(self) -> None:
        """Give up on the rest of the body: the connection is closed, not reused (unless
        nothing was left: a HEAD's or a 304's response ends with its head)."""
        connection = self._connection
        if connection is not None and connection.events and connection.events[0] is END:
            connection.pop()
            self._release()
            return
        self._connection = None
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
        if connection is not None:
            connection.close()


class UpstreamPool:
    """Keep-alive connections to one upstream address."""

    def __init__(
        self,
        host: str,
        port: int,
        config: PoolConfig | None = None,
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.name = f"{host}:{port}"
        self.config = config or PoolConfig()
        self.ssl = ssl
        self.server_hostname = server_hostname
        self._idle: collections.deque[UpstreamConnection] = collections.deque()
        self._all: set[UpstreamConnection] = set()
        self._expiry: asyncio.TimerHandle | None = None
        self.connections_made = 0  # for metrics and tests: reuse shows as few connections
        self.closed = False

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def active_count(self) -> int:
        return len(self._all) - len(self._idle)

    async def request(
        self,
        method: str,
        target: bytes,
        headers: hdrs.Headers,
        body: bytes | AsyncIterable[bytes] | None = None,
        content_length: int | None = None,
        *,
        sent: UpstreamConnection | None = None,
    ) -> UpstreamResponse:
        """Send one request and return once the response head has arrived.

        `headers` are sent as given, less the framing fields this client sets itself.
        A streamed `body` is sent with `content_length` when known, chunked otherwise.
        `sent` is the connection `send_now()` already sent this request on: only its
        answer is awaited (and, if that connection turns out stale, it is sent again).
        """
        connection = sent or self._take_idle()
        if connection is not None:
            try:
                if sent is not None:
                    return await self._response(sent)
                return await self._exchange(
                    connection, method, target, headers, body, content_length
                )
            except UpstreamClosed as exc:
                replayable = body is None or isinstance(body, bytes)
                if exc.response_started or method not in IDEMPOTENT or not replayable:
                    raise
                log.debug("event=stale_connection upstream=%s retry=fresh", self.name)
        connection = await self._connect()
        return await self._exchange(connection, method, target, headers, body, content_length)

    def send_now(self, waiter: AnswerWaiter, method: str, head: bytes) -> None:
        """Send a request without a body (`head`, framed) on an idle connection at once,
        and answer from the connection's callbacks.

        Exactly one of these follows, once:
        - `waiter.must_wait(None)` now: no idle connection; nothing was sent.
        - `waiter.answer_arrived(status, raw_head, body)`: the whole final answer
          arrived (in one read, or over several to at most DIRECT_RESPONSE_BYTES); the
          connection is already back in the pool (or closed, if it cannot be reused).
        - `waiter.must_wait(connection)`: the answer must be read in a task with
          `request(..., sent=connection)`: it is long, interim (1xx), broken, late, or
          the connection closed; the events read so far stay queued on it, and the
          task's read raises the failure, if any, with `response_started` set."""
        idle = self._idle
        while idle:  # _take_idle() and started_request(), inline: this runs per request
            connection = idle.pop()
            connection.idle_since = None
            if connection.reusable:
                break
            connection.close()
        else:
            waiter.must_wait(None)
            return
        if method == "HEAD":
            connection.parser.expect_head_response()
        connection.waiter = waiter
        connection.response_started = False
        connection.last_read = now = connection.loop.time()
        if connection._timer is None:
            connection._timer = connection.loop.call_at(
                now + self.config.read_timeout, connection._on_timer
            )
        transport = connection.transport
        assert transport is not None
        transport.write(head)

    async def _response(self, connection: UpstreamConnection) -> UpstreamResponse:
        """The answer to a request already sent on `connection`, awaited in a task."""
        connection.waiter = None
        try:
            head = await _response_head(connection)
        except BaseException:
            connection.close()
            raise
        return UpstreamResponse(connection, head, None)

    async def _connect(self) -> UpstreamConnection:
        if self.closed:
            raise UpstreamConnectError(f"pool for {self.name} is closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: UpstreamConnection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.server_hostname if self.ssl else None,
                )
        except TimeoutError as exc:
            raise ConnectTimeout(
                f"no connection to {self.name} within {self.config.connect_timeout}s"
            ) from exc
        except OSError as exc:
            raise UpstreamConnectError(
                f"cannot connect to {self.name}: {exc.strerror or exc}"
            ) from exc
        self.connections_made += 1
        self._all.add(connection)
        return connection

    async def _exchange(
        self,
        connection: UpstreamConnection,
        method: str,
        target: bytes,
        headers: hdrs.Headers,
        body: bytes | AsyncIterable[bytes] | None,
        content_length: int | None,
    ) -> UpstreamResponse:
        streamed = body is not None and not isinstance(body, bytes)
        request = request_bytes(method, target, headers, body, content_length)
        connection.started_request(method)
        sender = None
        try:
            await connection.write(request)
            if streamed:
                assert body is not None and not isinstance(body, bytes)
                # Sent beside the wait for the response: a server may answer (413, 401)
                # before it has read the whole body.
                sender = asyncio.create_task(
                    _send_body(connection, body, chunked=content_length is None)
                )
                sender.add_done_callback(_retrieve_exception)
            head = await _response_head(connection)
        except BaseException:
            if sender is not None:
                sender.cancel()
            connection.close()
            raise
        return UpstreamResponse(connection, head, sender)

    def _take_idle(self) -> UpstreamConnection | None:
        # (`send_now` does the same inline)
        while self._idle:
            connection = self._idle.pop()  # the most recent: least likely closed by the server
            connection.idle_since = None
            if connection.reusable:  # false once it closed, failed, or the server closed it
                return connection
            connection.close()
        return None

    def release(self, connection: UpstreamConnection, reusable: bool) -> None:
        if not (reusable and connection.reusable) or self.closed:
            connection.close()
            return
        if len(self._idle) >= self.config.max_idle:
            self._idle.popleft().close()
        connection.idle_since = connection.last_read  # its answer's end: no clock read
        self._idle.append(connection)
        if self._expiry is None:
            self._expire_at(connection.idle_since + self.config.idle_timeout)

    def _expire_at(self, when: float) -> None:
        """One timer per pool, not one per idle connection: connections are taken and
        returned at the right end of `_idle`, so the left one has been idle about longest
        (each since its answer's last read: one a task released well after that may sit
        right of a younger one, and closes with it, as late as that one is younger)."""
        self._expiry = asyncio.get_running_loop().call_at(when, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        idle = self._idle
        oldest_kept = asyncio.get_running_loop().time() - self.config.idle_timeout
        while idle and (idle[0].idle_since or 0.0) <= oldest_kept:
            idle.popleft().close()
        if idle:
            self._expire_at((idle[0].idle_since or 0.0) + self.config.idle_timeout)

    def forget(self, connection: UpstreamConnection) -> None:
        self._all.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    async def close(self) -> None:
        """Close idle connections now; ones in use close when their response ends."""
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        while self._idle:
            self._idle.pop().close()


def request_bytes(
    method: str,
    target: bytes,
    headers: hdrs.Headers,
    body: bytes | AsyncIterable[bytes] | None,
    content_length: int | None,
) -> bytes:
    """The request's head (and its body when given as bytes), framed by this client."""
    lines = [method.encode(), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        if name.lower() not in _FRAMING_FIELDS:
            lines += (name, b": ", value, b"\r\n")
    if isinstance(body, bytes):
        if body or method in _BODY_METHODS:
            lines.append(b"Content-Length: %d\r\n" % len(body))
    elif body is not None and content_length is not None:
        lines.append(b"Content-Length: %d\r\n" % content_length)
    elif body is not None:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    elif method in _BODY_METHODS:
        lines.append(b"Content-Length: 0\r\n")
    lines.append(b"\r\n")
    if isinstance(body, bytes):
        lines.append(body)
    return b"".join(lines)


async def _response_head(connection: UpstreamConnection) -> ResponseHead:
    """The final response head, skipping interim 1xx responses (100 Continue, 103)."""
    while True:
        event = await connection.next_event()
        if not isinstance(event, ResponseHead):
            raise UpstreamProtocolError(f"unexpected {event!r} before a response head")
        if event.status == 101:
            raise UpstreamProtocolError("upstream switched protocols; upgrades are not proxied")
        if event.status >= 200:
            return event
        end = await connection.next_event()
        if end is not END:
            raise UpstreamProtocolError("interim response with a body")


class ReleasingBody:
    """An upstream response's body passed on as a stream that calls `release` when it
    ends, fails or is abandoned (the balancer counts a request until its last byte)."""

    def __init__(self, response: UpstreamResponse, release: Callable[[], None]) -> None:
        self.response = response
        self._release: Callable[[], None] | None = release

    def __aiter__(self) -> ReleasingBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self.response.next_chunk()
        except BaseException:
            self._done()
            raise
        if chunk is None:
            self._done()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        await self.response.aclose()
        self._done()

    def _done(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def relay_body(
    response: UpstreamResponse, release: Callable[[], None]
) -> tuple[bytes | AsyncIterable[bytes], hdrs.Headers]:
    """What a proxy passes on of an upstream response: the body, and the framing header
    to add. A body that has all arrived goes as bytes (the head and it in one write, the
    upstream connection back to the pool at once); a longer one streams."""
    complete = response.take_complete_body()
    if complete is not None:
        release()
        return whole_body(response.head, complete)
    declared = response.head.content_length
    framing = [] if declared is None else [(b"Content-Length", b"%d" % declared)]
    return ReleasingBody(response, release), framing


def whole_body(head: ResponseHead, body: bytes) -> tuple[bytes, hdrs.Headers]:
    """A response body that has all arrived, and the framing header to pass on with it:
    none when the server can count the bytes, the declared length when a response to
    HEAD, or a 304, declares one and carries no body."""
    declared = head.content_length
    if declared is None or len(body) == declared:
        return body, []
    return b"", [(b"Content-Length", b"%d" % declared)]


def _retrieve_exception(task: asyncio.Task[None]) -> None:
    # The failure is logged in _send_body and surfaces to the caller through the response.
    if not task.cancelled():
        task.exception()


async def _send_body(
    connection: UpstreamConnection, body: AsyncIterable[bytes], chunked: bool
) -> None:
    try:
        async for chunk in body:
            if not chunk:
                continue
            if chunked:
                await connection.write(b"%x\r\n" % len(chunk), chunk, b"\r\n")
            else:
                await connection.write(chunk)
        if chunked:
            await connection.write(b"0\r\n\r\n")
    except HTTPError as exc:
        # The client's body broke off (or the upstream went away): the request is
        # incomplete, so the connection must not carry another one.
        log.info("event=request_body_aborted upstream=%s reason=%r", connection.pool.name, str(exc))
        connection.close()
        raise
