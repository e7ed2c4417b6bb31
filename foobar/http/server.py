"""The HTTP/1.1 server every tier runs: one `Connection` protocol per client connection and,
once a request needs one, one task per connection that answers its requests in order.

A tier gives a handler, `async def handler(request: Request) -> Response`. The request body
is read as a stream (`async for chunk in request.body`), the response body may be bytes or
an async iterable of bytes; neither is held whole in memory. Flow control both ways: the
socket stops being read while more than `high_water` body bytes wait for the handler, and
the response writer waits whenever the client's socket buffer is over its high-water mark.

What the core decides so no tier has to: framing (Content-Length or chunked, or close for
HTTP/1.0), no body for HEAD, 1xx, 204 and 304, `Expect: 100-continue`, keep-alive and
pipelining, the Date header, the limits and timeouts of `ServerConfig`, and an error
response with the right status for any `HTTPError` the parser or handler raises.

The fast path: a tier may also give `fast_handler(request) -> bool`, offered each request
without a body that arrives while its connection is idle. It returns False to leave the
request to the handler, or takes it and answers from whatever callback it likes with
`request.respond(response)`, or hands it to the connection's task with
`request.continue_in_task(handler)` once it has to wait in a way callbacks cannot. A
proxy forwards a GET this way and writes the answer from the upstream protocol's
callback: no task, future or coroutine per request, which is HAProxy's and nginx's shape
and most of what a proxied request costs in Python.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

from foobar.http import limits, proxy_protocol
from foobar.http.errors import (
    BodyTooLarge,
    ConnectionClosed,
    HTTPError,
    ProtocolError,
    RequestTimeout,
)
from foobar.http.flow import EVENT_SIZE, FlowControlled
from foobar.http.listener import Listener
from foobar.http.parser import END, Event, RequestHead, RequestParser
from foobar.http.writer import (
    FileBody as FileBody,
)
from foobar.http.writer import (
    Response as Response,
)
from foobar.http.writer import (
    ResponseWriter,
    frame,
)

log = logging.getLogger("foobar.http.server")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    max_header_bytes: int = limits.MAX_HEADER_BYTES
    max_header_fields: int = limits.MAX_HEADER_FIELDS
    max_body_bytes: int = limits.MAX_BODY_BYTES
    request_timeout: float = limits.REQUEST_TIMEOUT
    keepalive_timeout: float = limits.KEEPALIVE_TIMEOUT
    body_timeout: float = limits.BODY_TIMEOUT
    body_min_rate: float = limits.BODY_MIN_RATE
    send_timeout: float = limits.SEND_TIMEOUT
    high_water: int = limits.HIGH_WATER
    low_water: int = limits.LOW_WATER
    # every connection starts with a PROXY protocol preamble (HAProxy's accept-proxy)
    accept_proxy: bool = False
    # open connections at most (HAProxy's maxconn); None: derived from the open-files limit
    max_connections: int | None = None


Handler = Callable[["Request"], Awaitable[Response]]
# A proxied request's upstream, as nginx logs $upstream_addr, $upstream_status and
# $upstream_response_time: the server's address, its answer's status, and the seconds
# from the attempt's start to that answer.
UpstreamLog = tuple[str, int, float]
FastHandler = Callable[["Request"], bool]


# Told of every answered request, as the access log sees it: the request, the status, the
# body bytes sent, the seconds from its head's arrival to the last byte written, and the
# loop's time (loop.time()) then.
OnResponse = Callable[["Request", int, int, float, float], None]
# Builds the response for an error status (the parser's, a limit's, a handler's HTTPError):
# the app answers JSON, the web tier and balancer plain text, as nginx's error_page.
ErrorPage = Callable[[int, str], Response]


def error_response(status: int, detail: str = "") -> Response:
    """A small plain-text error page, `Connection: close` left to the caller."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    text = f"{status} {phrase}\n" + (f"{detail}\n" if detail else "")
    return Response(status, [(b"Content-Type", b"text/plain; charset=utf-8")], text.encode())


class ResponseCounts:
    """Responses by status and the body bytes sent, counted by the core as it answers (as
    nginx's and HAProxy's own counters are): plain numbers, read by a tier's metrics when
    they are scraped. A tier that wants them kept across a restart of its server (a
    reloaded listener) gives the same object to the new one."""

    __slots__ = ("by_status", "sent")

    def __init__(self) -> None:
        # indexed by the status, which is three digits (llhttp reads no other from an
        # upstream; the writer writes no other): a list's item costs 40% less to count
        # than a defaultdict's
        self.by_status = [0] * 1000
        self.sent = 0

    def statuses(self) -> Iterator[tuple[int, int]]:
        """(status, responses) for each status answered at least once."""
        return ((status, count) for status, count in enumerate(self.by_status) if count)


class Request(RequestHead):
    """A request whose head has arrived; its body streams in through `body`. It is the
    parser's head itself, the connection's parser making its heads as Requests
    (`RequestParser(head_type=...)`), with what the connection gives it (`bind`): one
    object a request, not a head and a wrapper round it (2k instructions less each)."""

    # Given by `bind` (the fast path makes the same stores inline)
    _connection: Connection
    # the peer's address, or the client's a PROXY preamble named (read before any head)
    client: tuple[str, int]
    # X-Forwarded-For and X-Forwarded-Proto as a proxy adds them to a request that has
    # neither, as field lines: the same for every request on a connection
    forwarding_fields: bytes
    # the loop's clock (monotonic, as the loop reads it once per iteration) at the read
    # that completed the head (the task path: when the task took it): the access log
    # times the answer from it, and a handler answering at once may use it as "now"
    arrived: float
    # Class-level defaults: a request the fast path takes sets only what differs.
    # The body: none, already complete (NO_BODY, set below once it exists), on the fast
    # path; the task path binds a RequestBody.
    body: RequestBody
    # The read that brought the head, when it held nothing of another message (the fast
    # path's common case): the head as received, give or take the empty lines llhttp
    # skips around one. A proxy passes it on as it is instead of rebuilding it field by
    # field, once it has ruled those lines out (a check that requests answered
    # otherwise, a file's, need not pay for).
    raw: bytes | None = None
    # what a proxying handler tells the access log, formatted only if logged
    upstream: UpstreamLog | None = None
    _fields: dict[bytes, bytes] | None = None  # header() look-ups, made on first use

    def bind(self, connection: Connection) -> Request:
        """Make this head a request of `connection`'s, its body read from there (the task
        path's requests; the fast path binds its own inline, with no body to read)."""
        self._connection = connection
        self.client = connection.peer
        self.forwarding_fields = connection.forwarding_fields
        self.body = RequestBody(self, connection)
        return self

    @property
    def scheme(self) -> str:
        return self._connection.scheme

    @property
    def client_ip(self) -> str:
        return self.client[0]

    @property
    def path(self) -> bytes:
        return self.target.partition(b"?")[0]

    @property
    def query(self) -> bytes:
        return self.target.partition(b"?")[2]

    def header(self, name: bytes) -> bytes | None:
        """The last value of a header (`name` lower-case), or None. A conditional or
        range request to the file server asks for several (validators, range,
        encoding): one pass over a browser's dozen fields instead of one per question."""
        fields = self._fields
        if fields is None:
            fields = self._fields = {key.lower(): value for key, value in self.headers}
        return fields.get(name)

    def respond(self, response: Response) -> None:
        """Answer a request the fast handler took. A bytes body goes out at once; one
        that streams (a file, an iterable) is written by the connection's task.

        Before: the fast handler took this request (the connection is DIRECT with it)
        and has called none of respond/respond_raw/continue_in_task for it. After: the
        connection is IDLE again (the next request may be offered at once), or CLOSING
        when the answer ends it; RuntimeError if the request was not being answered."""
        if isinstance(response.body, bytes):
            self._connection.respond_directly(self, response)
        else:
            self._connection.hand_over(self, _answered_with(response))

    def respond_raw(self, status: int, head: bytes, body: bytes | FileBody) -> None:
        """Answer a request the fast handler took with a head already serialised: the
        status line and field lines, a Content-Length that frames `body` among them, but
        not the empty line that ends the head: the core adds its framing and that line.
        A file goes out with sendfile(2) from here while the socket takes it; the task
        sends what is left. Same contract as `respond`."""
        connection = self._connection  # (the connection's work, here: a call less)
        if connection._direct is not self:
            raise RuntimeError("respond() on a request that is not being answered directly")
        keep_alive = self.keep_alive and not connection.state.closing
        if not keep_alive:
            end = b"Connection: close\r\n\r\n"
        elif self.version == "1.0":
            end = b"Connection: keep-alive\r\n\r\n"
        else:
            end = b"\r\n"
        if isinstance(body, FileBody):
            rest = connection.writer.send_file_now(head + end, body)
            if rest is not None:  # the socket is full
                connection.hand_over(self, _answered_with(Response(status, body=rest)))
                return
            sent = body.count
        else:
            transport = connection.transport
            if transport is not None and not transport.is_closing():
                transport.write(b"".join((head, end, body)))
            sent = len(body)
        connection._answered_directly(self, status, sent, keep_alive)

    def continue_in_task(self, handler: Handler) -> None:
        """Hand a request the fast handler took to the connection's task: `handler`
        answers it as if it had been the server's handler from the start.

        Before: as for `respond`. After: the connection is IDLE with the request's head
        first in its queue and the task woken (started if it had none); the task takes
        the head with `handler`, keeps the arrival time for the access log, and answers
        requests pipelined behind it in order afterwards. May be called from any
        callback, later than the fast handler's return (an upstream's answer)."""
        self._connection.hand_over(self, handler)


class RequestBody:
    """The body of one request, chunk by chunk: `async for chunk in body`, or
    `await body.read()` for a body small enough to hold (bounded by `max_body_bytes`)."""

    __slots__ = ("_connection", "_expect_continue", "complete", "received", "waited")

    def __init__(self, head: RequestHead | None, connection: Connection | None) -> None:
        self._connection = connection
        self._expect_continue = head is not None and head.expect_continue and head.has_body
        self.received = 0
        self.waited = 0.0  # seconds spent waiting for the client to send more of it
        # False even without a body: the parser's END for it is still queued.
        self.complete = head is None

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body, or None at its end."""
        if self.complete:
            return None
        connection = self._connection
        assert connection is not None
        if self._expect_continue:
            self._expect_continue = False
            connection.send_continue()
        event = await connection.next_event(self)
        if event is END:
            self.complete = True
            return None
        assert isinstance(event, bytes)
        self.received += len(event)
        if self.received > connection.config.max_body_bytes:
            raise BodyTooLarge(f"request body over {connection.config.max_body_bytes} bytes")
        return event

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    @property
    def continue_withheld(self) -> bool:
        """The client waits for `100 Continue` that was never sent: its body may or may
        not follow, so the connection cannot be reused."""
        return self._expect_continue and not self.complete


# The body of every request the fast path takes: none, already complete. Shared: nothing
# writes to a complete body.
NO_BODY: Final = RequestBody(None, None)
Request.body = NO_BODY


class ServerState:
    """What the graceful shutdown needs: the open connections and whether we are closing."""

    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        self.on_discard: Callable[[], None] | None = None  # the listener's: one fewer open
        self.closing = False
        self.all_closed = asyncio.Event()
        self.all_closed.set()

    def add(self, connection: Connection) -> None:
        self.connections.add(connection)
        self.all_closed.clear()

    def discard(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self.all_closed.set()
        if self.on_discard is not None:
            self.on_discard()


# A client connection's phase: one at a time, changed only by `Connection._enter()` along
# `_TRANSITIONS` (h11's _state.py is the model). The read side is apart (`closed`: no more
# bytes will come): a client may half-close after its request and still be answered.
IDLE: Final = "idle"  # no request in progress: waiting for the next head
DIRECT: Final = "direct"  # the fast handler answers a request from callbacks; a task sleeps
TASK: Final = "task"  # the connection's task runs the handler or writes the answer
CLOSING: Final = "closing"  # the socket is closing; input still arriving is dropped
_TRANSITIONS: Final = {
    IDLE: frozenset({DIRECT, TASK, CLOSING}),
    # answered (or handed to the task, its head queued again for it): IDLE
    DIRECT: frozenset({IDLE, CLOSING}),
    TASK: frozenset({IDLE, CLOSING}),
    CLOSING: frozenset(),
}


class Connection(FlowControlled):
    """One client connection: parses what arrives, offers a request to the fast handler
    or queues it for the serving task, and writes responses with flow control. Its phase
    is one field (see IDLE...CLOSING above). Timeouts share one `call_at` handle that is
    moved only when it fires early, so activity costs a float store, not a timer reset."""

    __slots__ = (
        "_body_wait_started",
        "_direct",
        "_error",
        "_handed_over",
        "_head_started",
        "_last_read",
        "_last_write",
        "_peer_eof",
        "_proxy_preamble",
        "_requests",
        "_task",
        "_timer",
        "_timer_at",
        "_waiting_body",
        "config",
        "counts",
        "error_page",
        "forwarding_fields",
        "handler",
        "parser",
        "peer",
        "phase",
        "scheme",
        "server",
        "state",
        "writer",
    )

    def __init__(self, server: Server) -> None:
        config = server.config
        super().__init__(config.high_water, config.low_water)
        self.handler = server.handler
        self.config = config
        self.state = server.state
        self.server = server
        self.counts = server.counts
        self.error_page = server.error_page
        self.scheme = server.scheme
        self.parser = RequestParser(config.max_header_bytes, config.max_header_fields, Request)
        self.writer = ResponseWriter(self)
        self.peer: tuple[str, int] = ("", 0)
        self.forwarding_fields = b""  # see Request.forwarding_fields; made with the peer
        self._error: HTTPError | None = None
        self._peer_eof = False
        self.phase = IDLE
        # bytes of a PROXY preamble still being read; None once read (or not expected)
        self._proxy_preamble = proxy_protocol.Preamble() if config.accept_proxy else None
        self._task: asyncio.Task[None] | None = None
        self._requests = 0
        # the request the fast handler is answering in callbacks (the task sleeps meanwhile)
        self._direct: Request | None = None
        self._handed_over: tuple[Request, Handler] | None = None
        # timeouts
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._last_read = self._last_write = self.loop.time()
        self._head_started: float | None = None  # first byte of an incomplete head
        self._waiting_body: RequestBody | None = None  # the body a read waits for
        self._body_wait_started = 0.0

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._set_peer((peer[0], peer[1]) if isinstance(peer, tuple) else ("unix", 0))
        self._head_started = self.loop.time()  # a new connection owes its head at once
        self.state.add(self)
        # No task yet: one starts when a request (or a timeout, or a close) needs it. A
        # connection the fast path serves whole never has one.
        self._arm_timer()

    def _enter(self, phase: str) -> None:
        assert phase in _TRANSITIONS[self.phase], f"{self.phase} -> {phase}"
        self.phase = phase

    def data_received(self, data: bytes) -> None:
        if self.phase is CLOSING:
            return
        if self._proxy_preamble is not None:
            data = self._take_preamble(data)
            if not data:
                return
        now = self._last_read = self.loop.time()
        parser = self.parser
        read_starts_message = not parser.in_message
        if read_starts_message and self.phase is IDLE and self._head_started is None:
            self._head_started = now
        try:
            events = parser.feed(data)
        except ProtocolError as exc:
            self.queue(exc.events)
            self._fail(exc)
            return
        if (
            len(events) > 1
            and events[1] is END
            and self.phase is IDLE
            and self.server.fast_handler is not None  # looked up: a reload may change it
            and not self.events
            and self.drain_waiter is None
            and not self.state.closing
        ):
            # the read held just this request's message: a proxy may pass it on as it is
            alone = read_starts_message and len(events) == 2 and not parser.in_message
            if self._offer(events[0], data if alone else None):
                if len(events) == 2 or self.closed:
                    return
                events = events[2:]
        if events:
            self.queue(events)

    def _offer(self, head: Event, raw: bytes | None) -> bool:
        """Offer a request without a body that arrived while the connection was idle to
        the fast handler; True when it took it. `raw`: see Request.raw."""
        fast_handler = self.server.fast_handler
        assert isinstance(head, Request) and fast_handler is not None
        # bind(self), inline, but for the body: the class's default, NO_BODY
        request = self._direct = head
        request._connection = self
        request.client = self.peer
        request.forwarding_fields = self.forwarding_fields
        request.raw = raw
        request.arrived = self._last_read
        assert self.phase is IDLE  # _enter(DIRECT), inline on the fast path
        self.phase = DIRECT
        try:
            if fast_handler(request):
                return True
        except Exception:
            log.exception("event=handler_error method=%s target=%r", head.method, head.target)
            if self._direct is request:
                # the connection ends with this answer: nothing after it is read
                self.respond_directly(request, self.error_page(500, ""), keep_alive=False)
            return True
        self._direct = None
        self._enter(IDLE)
        return False

    def _set_peer(self, peer: tuple[str, int]) -> None:
        """The client's address, from the socket or a PROXY preamble, and the forwarding
        fields that name it."""
        self.peer = peer
        self.forwarding_fields = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n" % (
            peer[0].encode(),
            self.scheme.encode(),
        )

    def wake(self) -> None:
        if self.phase is not DIRECT:  # the task sleeps while a request is answered in callbacks
            self._wake_task()

    def _wake_task(self) -> None:
        """Wake the serving task; start it if the connection has none yet."""
        if self._task is None:
            self._task = self.loop.create_task(self._serve())
        else:
            super().wake()

    def _take_preamble(self, data: bytes) -> bytes:
        """Read the PROXY preamble; the client's real address replaces the peer's.
        Returns what follows it."""
        preamble = self._proxy_preamble
        assert preamble is not None
        try:
            rest = preamble.feed(data)
        except ProtocolError as exc:
            log.info("event=bad_proxy_preamble peer=%s reason=%r", self.peer[0], str(exc))
            self._proxy_preamble = None
            self.abort()  # HAProxy closes without a word: no HTTP was spoken yet
            return b""
        if rest is None:
            return b""
        self._proxy_preamble = None
        if preamble.source is not None:
            self._set_peer(preamble.source)
        return rest

    def eof_received(self) -> bool | None:
        self._peer_eof = True
        if self.phase is CLOSING:
            return False
        # A client may half-close after its last request and still read the answer.
        self._closed_by_peer()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed_by_peer()
        self.wake_drain(ConnectionClosed("client closed the connection"))
        if self._timer is not None:
            self._timer.cancel()
        self.state.discard(self)
        if self.phase is TASK and self._task is not None:
            # nginx's default (proxy_ignore_client_abort off): abandon the work, so a
            # proxied request or a database query is cancelled with its client.
            self._task.cancel()

    def resume_writing(self) -> None:
        self._last_write = self.loop.time()
        super().resume_writing()

    # the serving task

    async def _serve(self) -> None:
        try:
            while True:
                head = await self._next_head()
                if head is None:
                    break
                if not await self._answer(head):
                    break
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            if not self.closed:
                raise
        finally:
            self._close()

    async def _next_head(self) -> Request | None:
        """The next request's head; None when the connection ends quietly. A malformed or
        late head is answered with its error status here."""
        self._head_started = self._head_started if self._requests == 0 else None
        if self.parser.in_message:
            self._head_started = self._last_read
        try:
            event = await self.next_event()
        except ConnectionClosed:
            return None
        except HTTPError as exc:
            await self._send_error(exc, exc.status)
            return None
        assert isinstance(event, Request), event
        return event

    async def _answer(self, head: Request) -> bool:
        """Run the handler for one request and write its response; True to keep going."""
        handed_over, self._handed_over = self._handed_over, None
        if handed_over is not None and handed_over[0] is head:
            request, handler = handed_over
        else:
            request, handler = head.bind(self), self.handler
            request.arrived = self.loop.time()
        self._enter(TASK)
        try:
            return await self._answer_request(request, handler)
        finally:
            if self.phase is TASK:
                self._enter(IDLE)

    async def _answer_request(self, request: Request, handler: Handler) -> bool:
        keep_alive = request.keep_alive
        if (
            request.content_length is not None
            and request.content_length > self.config.max_body_bytes
        ):
            response = self.error_page(413, "request body too large")
            keep_alive = False
        else:
            try:
                response = await handler(request)
            except HTTPError as exc:
                if isinstance(exc, ConnectionClosed):
                    raise
                response = self.error_page(exc.status, str(exc))
                keep_alive = keep_alive and exc.status < 500 and not _breaks_framing(exc)
            except Exception:
                log.exception(
                    "event=handler_error method=%s target=%r", request.method, request.target
                )
                response = self.error_page(500, "")
                keep_alive = False
        if request.body.continue_withheld:
            keep_alive = False
        keep_alive = keep_alive and not self.state.closing
        sent, complete = await self.writer.write(request, response, keep_alive)
        self._answered(request, response.status, sent)
        if self.events and self.events[0] is END and not request.body.complete:
            self.pop()  # the end of a bodiless request, already here: no need to wait for it
            request.body.complete = True
        if not (keep_alive and complete):
            return False
        return await self._discard_body(request)

    async def _discard_body(self, request: Request) -> bool:
        """Read and drop what the handler left of the body; False to close instead."""
        body = request.body
        if body.complete:
            return True
        if request.content_length is not None and (
            request.content_length - body.received > limits.DISCARD_BODY_BYTES
        ):
            return False
        dropped = 0
        try:
            while (chunk := await body.next_chunk()) is not None:
                dropped += len(chunk)
                if dropped > limits.DISCARD_BODY_BYTES:
                    return False
        except HTTPError:
            return False
        return True

    def _answered(self, request: Request, status: int, sent: int) -> None:
        """The bookkeeping after every response, on either path: the keep-alive time
        counts from here, the response is counted, and the access log hears of it."""
        now = self._last_write = self.loop.time()
        self._requests += 1
        counts = self.counts
        counts.by_status[status] += 1
        counts.sent += sent
        on_response = self.server.on_response  # a reload may turn the access log on or off
        if on_response is not None:
            on_response(request, status, sent, now - request.arrived, now)

    # the fast path

    def respond_directly(
        self, request: Request, response: Response, keep_alive: bool = True
    ) -> None:
        """Write the answer to the request the fast handler took, in one write; then wait
        for the next request (pipelined ones go to the task) or end the connection."""
        if self._direct is not request:
            raise RuntimeError("respond() on a request that is not being answered directly")
        body = response.body
        assert isinstance(body, bytes), "respond() hands a streamed body to the task"
        keep_alive = keep_alive and request.keep_alive and not self.state.closing
        lines, framing = frame(request, response, keep_alive)
        no_body, length, keep_alive = framing.no_body, framing.length, framing.keep_alive
        if not no_body and body:
            lines.append(body)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(b"".join(lines))
        self._answered_directly(request, response.status, 0 if no_body else length or 0, keep_alive)

    def _answered_directly(
        self, request: Request, status: int, sent: int, keep_alive: bool
    ) -> None:
        self._direct = None
        assert self.phase is DIRECT  # _enter(IDLE), inline on the fast path
        self.phase = IDLE
        self._answered(request, status, sent)
        if not keep_alive:
            self._end()
            return
        self._head_started = self._last_read if self.parser.in_message else None
        if self.events:
            self._wake_task()  # pipelined requests
        elif self.closed:
            self._closed_by_peer()  # the client half-closed meanwhile
        elif self._timer is None:  # one that is armed fires first and re-arms itself
            self._arm_timer()

    def hand_over(self, request: Request, handler: Handler) -> None:
        """The task answers the request the fast handler took, with `handler`."""
        if self._direct is not request:
            raise RuntimeError("continue_in_task() on a request not being answered directly")
        self._direct = None
        self._handed_over = (request, handler)
        self.events.appendleft(request)
        self.buffered += EVENT_SIZE
        self._enter(IDLE)
        self._wake_task()

    def _end(self) -> None:
        """Close once what was written has gone: the task (if any) stops, then `_close`."""
        self.closed = True
        if self._task is not None:
            self._task.cancel()  # its `finally` closes
        else:
            self._close()

    # reading

    async def next_event(self, body: RequestBody | None = None) -> Event:
        """The next parsed event, waiting for it with the right timeouts running: those of
        a request head, or those of `body` when it is for a request body."""
        while not self.events:
            if self._error is not None:
                raise self._error
            if self.closed:
                raise ConnectionClosed("client closed the connection")
            self._waiting_body = body
            started = self._body_wait_started = self.loop.time()
            self._arm_timer()
            try:
                await self.wait_for_event()
            finally:
                self._waiting_body = None
                if body is not None:
                    body.waited += self.loop.time() - started
        return self.pop()

    def _fail(self, exc: HTTPError) -> None:
        """Stop reading: what follows cannot be trusted. The task answers `exc`."""
        self._error = exc
        self.pause_reading()
        self.closed = True
        self.wake()

    def _closed_by_peer(self) -> None:
        self.closed = True
        if self._task is None and self.phase is not DIRECT and not self.events:
            self._close()  # nothing left to answer, and no task to tell
        else:
            self.wake()

    # writing

    def send_continue(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def wait_writable(self) -> None:
        """The writer's wait for room in the transport, with the send timeout running."""
        if self.drain_waiter is None:
            return
        self._last_write = self.loop.time()
        self._arm_timer()
        await self.drain()

    async def _send_error(self, exc: Exception, status: int) -> None:
        """Answer a request we could not parse or wait for, then close."""
        if self.transport is None or self.transport.is_closing():
            return
        log.info(
            "event=request_rejected status=%d peer=%s reason=%r", status, self.peer[0], str(exc)
        )
        # a stand-in head: the request could not be read, so answer as to a plain GET
        head = RequestHead("GET", b"", "1.1", [], False, False, None, False)
        await self.writer.write(head, self.error_page(status, str(exc)), False)

    # timeouts

    def _deadline(self) -> tuple[float, str] | None:
        config = self.config
        deadlines = []
        if self.phase is IDLE:
            if self._head_started is not None:
                deadlines.append((self._head_started + config.request_timeout, "head"))
            else:
                # idle since the last request's bytes or the end of its answer, the later:
                # a slow answer does not use up the keep-alive time (nginx, HAProxy)
                idle_since = max(self._last_read, self._last_write)
                deadlines.append((idle_since + config.keepalive_timeout, "idle"))
        body = self._waiting_body
        if body is not None:
            deadlines.append((self._last_read + config.body_timeout, "body"))
            if config.body_min_rate > 0:
                # a minimum rate, as Apache's mod_reqtimeout: after `body_timeout`, each
                # byte received buys 1/rate s more; only the time spent waiting for the
                # client counts, not the time the handler took to read on
                allowed = config.body_timeout + body.received / config.body_min_rate
                deadlines.append((self._body_wait_started + allowed - body.waited, "rate"))
        if self.drain_waiter is not None:
            deadlines.append((self._last_write + config.send_timeout, "send"))
        return min(deadlines) if deadlines else None

    def _arm_timer(self) -> None:
        deadline = self._deadline()
        if deadline is None:
            return
        when = deadline[0]
        if self._timer is not None:
            if self._timer_at <= when:
                return  # it fires first and re-arms itself for the real deadline
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline()
        if deadline is None or self.closed:
            return
        when, kind = deadline
        if self.loop.time() < when:
            self._arm_timer()
            return
        if kind == "idle" or (kind == "head" and not self.parser.in_message):
            log.debug("event=idle_timeout peer=%s", self.peer[0])
            self._closed_by_peer()  # an idle keep-alive connection ends without a word
        elif kind == "head":
            self._fail(RequestTimeout("request head not received in time"))
        elif kind == "body":
            self._fail(RequestTimeout("request body not received in time"))
        elif kind == "rate":
            rate = self.config.body_min_rate
            self._fail(RequestTimeout(f"request body slower than {rate:.0f} bytes/s"))
        else:
            log.info("event=send_timeout peer=%s", self.peer[0])
            if self.transport is not None:
                self.transport.abort()

    # closing

    def shutdown(self) -> None:
        """Graceful shutdown: close now if idle, otherwise after the current response."""
        if self.phase is IDLE and not self.parser.in_message and not self.events:
            self._closed_by_peer()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        if self._task is not None:
            self._task.cancel()

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._enter(CLOSING)
        unread_input = (
            self._error is not None
            or self.parser.in_message
            or any(event is not END for event in self.events)
        )
        if self._peer_eof or not unread_input or not transport.can_write_eof():
            transport.close()
            return
        # Lingering close, as nginx does: closing with unread input makes the kernel send
        # a reset that can destroy the response (a 413, a 431) before the client reads
        # it. Send FIN, drop what still arrives, and close on the client's FIN or soon.
        transport.write_eof()
        transport.resume_reading()
        self.loop.call_later(limits.LINGER_TIMEOUT, transport.close)


def _answered_with(response: Response) -> Handler:
    async def handler(request: Request) -> Response:
        return response

    return handler


def _breaks_framing(exc: HTTPError) -> bool:
    """After these the rest of the request cannot be read reliably."""
    return isinstance(exc, ProtocolError | BodyTooLarge | RequestTimeout)


class Server:
    """A listening HTTP server with graceful shutdown.

    server = Server(handler, ServerConfig())
    await server.start("127.0.0.1", 8080)
    ...
    await server.shutdown(drain_timeout=30)
    """

    def __init__(
        self,
        handler: Handler,
        config: ServerConfig | None = None,
        on_response: OnResponse | None = None,
        error_page: ErrorPage | None = None,
        fast_handler: FastHandler | None = None,
        counts: ResponseCounts | None = None,
    ) -> None:
        self.handler = handler
        self.fast_handler = fast_handler
        self.config = config or ServerConfig()
        self.on_response = on_response
        self.counts = counts or ResponseCounts()
        self.error_page = error_page or error_response
        self.state = ServerState()
        self.scheme = "http"
        self.listener: Listener | None = None

    def _protocol(self) -> Connection:
        return Connection(self)

    async def start(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        ssl: Any = None,
        sock: Any = None,
        reuse_port: bool = False,
    ) -> None:
        self.scheme = "http" if ssl is None else "https"
        self.listener = Listener(
            self._protocol,
            lambda: len(self.state.connections),
            self.config.max_connections,
            ssl,
        )
        self.state.on_discard = self.listener.connection_closed
        await self.listener.start(host, port, reuse_port=reuse_port, sock=sock)

    @property
    def address(self) -> tuple[str, int]:
        assert self.listener is not None
        return self.listener.address

    async def shutdown(self, drain_timeout: float = limits.DRAIN_TIMEOUT) -> None:
        """Stop accepting, let requests in flight finish within `drain_timeout`, close
        idle connections at once, then cut what remains."""
        if self.listener is not None:
            self.listener.close()
        self.state.closing = True
        for connection in list(self.state.connections):
            connection.shutdown()
        try:
            await asyncio.wait_for(self.state.all_closed.wait(), drain_timeout)
        except TimeoutError:
            left = list(self.state.connections)
            log.warning("event=drain_timeout connections=%d", len(left))
            for connection in left:
                connection.abort()
