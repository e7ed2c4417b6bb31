"""The forwarding engine both proxies run: the balancer (HAProxy's job) and the web tier's
`/api/` proxy (nginx's). The mechanism lives here, once; each tier brings its policy as a
`Route`, the way HAProxy's backend.c calls the balancing algorithm through its lbprm hooks
and never knows which one runs.

The engine owns, for one request (a `ProxyExchange`):
- the fast path: a request without a body that arrived on an idle client connection is
  sent at once on an idle pooled upstream connection, and its answer, when it arrives
  whole and length-framed, is relayed from the upstream protocol's callback: no task,
  future or coroutine per request, as HAProxy and nginx work. The client's header block
  goes on as received with the forwarding fields added; the answer's head goes back as
  received less its hop-by-hop fields, with the tier's fields added;
- the hand-over to the client connection's task, from the point reached, whenever
  something has to wait: a queue, a new connection, a long or streamed answer, an
  interim 1xx, a failure to retry;
- the attempt loop and the one retry rule: after a connect failure (nothing was sent)
  any request may be tried again; once the request reached a server, only an idempotent
  request without a body that got no response byte may (RFC 9110 §9.2.2; nginx's
  `proxy_next_upstream`, HAProxy's `retry-on` defaults); never once a byte went back;
- relaying with the core's backpressure, timing, and the access log's upstream fields.

The tier decides (`Route`): the server for each attempt and whether to wait for one, how
many tries a failure of a kind gets (HAProxy's `retries`, nginx's upstream list), what an
answer means to its passive checks (a 5xx; nginx's `http_502`), its slots, and the fields
it adds to requests and answers.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import AsyncIterable
from typing import Final, Generic, Protocol, TypeVar

from foobar.http import headers as hdrs
from foobar.http.client import (
    IDEMPOTENT,
    UpstreamConnection,
    UpstreamPool,
    relay_body,
    request_bytes,
    whole_body,
)
from foobar.http.errors import HTTPError, UpstreamConnectError, UpstreamError, UpstreamTimeout
from foobar.http.parser import ResponseHead
from foobar.http.server import Request, Response

# What ended an attempt, as the tiers' passive checks and counters name it.
CONNECT: Final = "connect"  # no connection: nothing was sent
TIMEOUT: Final = "timeout"  # no answer in time
ERROR: Final = "error"  # the connection broke, or the answer was malformed
STATUS: Final = "status"  # an answer the route turned down (nginx's http_502)

# In an answer's head, lower-cased, a hop-by-hop field (llhttp has refused bare LFs and
# spaces before colons, so every "\r\n" starts a field line). Group 1: the one servers
# usually send, "Connection: keep-alive" or "close", which names no other field, when no
# other hop-by-hop field follows it (the first branch reads the rest of the head; it
# starts with a letter, not the group, so sre skips it at once on other lines).
_HOP_BY_HOP_NAMES: Final = b"|".join(re.escape(name) for name in sorted(hdrs.HOP_BY_HOP))
_HOP_BY_HOP_FIELD: Final = re.compile(
    rb"\r\n(?:connection:([ \t]*(?:keep-alive|close)[ \t]*)(?:\r\n(?!(?:%s):)[^\r]*)*\Z"
    rb"|(?:%s):)" % (_HOP_BY_HOP_NAMES, _HOP_BY_HOP_NAMES)
)


_CRLF: Final = b"\r\n"


class Target(Protocol):
    """A server a route sends to: its connection pool, and its name in the access log."""

    @property
    def pool(self) -> UpstreamPool: ...

    @property
    def label(self) -> str: ...


T = TypeVar("T", bound=Target)


class Route(Protocol[T]):
    """A tier's forwarding policy. Every hook runs in the event loop and must not block.

    Slots: `pick_now` and `pick` hand back a target whose slot is taken (HAProxy's
    `maxconn`); the engine calls `release(target)` exactly once for each, when the
    answer's last byte went to the client or the attempt ended otherwise."""

    # Request fields (lower-case) the route sets itself (the engine sets X-Forwarded-For
    # and X-Forwarded-Proto); a head carrying one is rebuilt from its field list instead
    # of being passed on as received.
    replaced_fields: frozenset[bytes]

    def pick_now(self, exchange: ProxyExchange[T]) -> T | None:
        """The fast path's target, its slot taken, without waiting. None hands the
        request to the task path, whose `pick` waits or says why not. The attempt's
        start, `exchange.started`, is set: the route's clock reading for it."""
        ...

    async def pick(self, exchange: ProxyExchange[T]) -> T:
        """The target for attempt `exchange.attempt` (from 0; `exchange.failed` is the
        one the attempt before failed on), waiting for a slot if it must. Raises an
        `HTTPError` (503, 502) when there is none."""
        ...

    def may_retry(self, exchange: ProxyExchange[T], kind: str) -> bool:
        """The engine's rule allows another attempt after one that failed with `kind`:
        has the route a try left?"""
        ...

    def failed(self, exchange: ProxyExchange[T], target: T, kind: str, reason: str) -> None:
        """Passive checks and counters: an attempt on `target` failed with `kind`."""
        ...

    def answered(
        self, exchange: ProxyExchange[T], target: T, status: int, seconds: float
    ) -> bytes | None:
        """An answer arrived, `seconds` after the attempt began: count it, and give the
        field lines ("Name: value\r\n" each) added to it on its way to the client.
        None turns it down (nginx's `proxy_next_upstream http_502`), which a route may do
        only for a request that may be replayed (`exchange.replayable`) and while it has
        a try left: the engine then fails the attempt with STATUS and makes the next."""
        ...

    def release(self, exchange: ProxyExchange[T], target: T) -> None:
        """An attempt on `target` is over: its slot is free."""
        ...

    def request_fields(self, request: Request) -> bytes:
        """Field lines ("Name: value\\r\\n" each) added to the request sent upstream,
        after the engine's X-Forwarded-For and X-Forwarded-Proto."""
        ...

    def error(self, status: int, detail: str) -> Response:
        """The answer when no attempt succeeded or nothing could take the request."""
        ...


class ProxyExchange(Generic[T]):
    """One request on its way through the proxy: what both paths share, so the fast path
    can stop anywhere and the task path go on from there."""

    # Class-level defaults: a request answered on the fast path sets only what it uses.
    attempt = 0  # attempts made before the current one
    replays = 0  # of them, the ones after the request had reached a server
    failed: T | None = None  # the target the previous attempt failed on
    sent: UpstreamConnection | None = None  # sent on by the fast path, not yet answered
    started = 0.0  # time.monotonic() when the current attempt began
    plan: object = None  # the route's own state for this request
    target: T | None = None  # the current attempt's, its slot taken

    def __init__(self, forwarder: Forwarder[T], request: Request) -> None:
        self.forwarder = forwarder
        self.request = request

    @property
    def replayable(self) -> bool:
        """May the request be sent again once it has reached a server?"""
        request = self.request
        return request.method in IDEMPOTENT and not request.has_body

    # the fast path, called back by the upstream connection (see UpstreamPool.send_now)

    def answer_arrived(self, status: int, raw_head: bytes, body: bytes) -> None:
        """The whole final answer arrived (its head as received), the connection is back
        in its pool."""
        target = self.target
        assert target is not None
        added = self._take_answer(target, status)
        if added is None:
            self.request.continue_in_task(self.forward)
            return
        self.target = None
        self.forwarder.route.release(self, target)
        passed_on = relayed_head(raw_head, added)
        if passed_on is not None:
            self.request.respond_raw(status, passed_on, body)
            return
        parsed = ResponseHead(status, raw_head)
        body, framing = whole_body(parsed, body)
        self.request.respond(_relayed(parsed, body, framing, added))

    def must_wait(self, connection: UpstreamConnection | None) -> None:
        """The answer must be read in the task (long, interim, failed), on `connection`;
        None: nothing was sent (no idle connection), the task connects."""
        self.sent = connection
        self.request.continue_in_task(self.forward)

    # the task path

    async def forward(self, request: Request) -> Response:
        """Attempts by the rules above until one is answered or none is left. Joins the
        fast path with the target it chose and, if it got that far, the connection it
        sent on (`sent`)."""
        route = self.forwarder.route
        while True:
            target = self.target
            if target is None:
                try:
                    target = self.target = await route.pick(self)
                except HTTPError as exc:
                    return route.error(exc.status, str(exc))
            connection, self.sent = self.sent, None
            if connection is None:
                self.started = time.monotonic()
            try:
                response = await target.pool.request(
                    request.method,
                    request.target,
                    self.forwarder.request_fields(request),
                    request.body if request.has_body else None,
                    request.content_length,
                    sent=connection,
                )
            except UpstreamError as exc:
                kind = _kind(exc)
                if not self._attempt_failed(target, kind, str(exc), exc.response_started):
                    return route.error(exc.status, str(exc))
                continue
            except BaseException:  # cancelled: the client left
                self.target = None
                route.release(self, target)
                raise
            added = self._take_answer(target, response.status)
            if added is None:
                if response.take_complete_body() is None:  # all here: the connection stays
                    await response.aclose()
                continue
            self.target = None  # released when the body has been relayed
            body, framing = relay_body(response, functools.partial(route.release, self, target))
            return _relayed(response.head, body, framing, added)

    # what both paths share

    def _take_answer(self, target: T, status: int) -> bytes | None:
        """Account for an answer: the field lines the route adds to it, or None when the
        route turned it down and the next attempt is to be made."""
        seconds = time.monotonic() - self.started
        added = self.forwarder.route.answered(self, target, status, seconds)
        if added is None:
            assert self.replayable, "a route turned down the answer to a request it can't replay"
            self._attempt_failed(target, STATUS, f"answered {status}", False)
            return None
        self.request.upstream = (target.label, status, seconds)
        return added

    def _attempt_failed(self, target: T, kind: str, reason: str, response_started: bool) -> bool:
        """End the current attempt as failed; True when another one may follow. The one
        retry rule: nothing sent (CONNECT), any request; sent, only a replayable request
        that got no byte of an answer; a turned-down answer (STATUS) was asked for."""
        route = self.forwarder.route
        self.target = None
        route.release(self, target)
        route.failed(self, target, kind, reason)
        self.failed = target
        self.attempt += 1
        if kind == CONNECT:
            return route.may_retry(self, kind)
        if kind != STATUS and (response_started or not self.replayable):
            return False
        if kind == STATUS or route.may_retry(self, kind):
            self.replays += 1
            return True
        return False


def _relayed(
    head: ResponseHead, body: bytes | AsyncIterable[bytes], framing: hdrs.Headers, added: bytes
) -> Response:
    """An answer rebuilt field by field: its end-to-end fields, the relay's framing, and
    the route's fields."""
    fields = hdrs.end_to_end(head.headers)
    fields += framing
    fields += hdrs.parse_lines(added)
    return Response(head.status, fields, body, head.reason)


def _kind(error: UpstreamError) -> str:
    if isinstance(error, UpstreamConnectError):
        return CONNECT
    return TIMEOUT if isinstance(error, UpstreamTimeout) else ERROR


class Forwarder(Generic[T]):
    """A route's requests, forwarded: `answer_now` is the core's fast handler, `handle`
    its handler for the rest."""

    def __init__(self, route: Route[T]) -> None:
        assert route.replaced_fields <= hdrs.SET_BY_PROXIES, "the parser must know them"
        self.route = route

    def answer_now(self, request: Request) -> bool:
        exchange = ProxyExchange(self, request)
        exchange.started = time.monotonic()
        target = exchange.target = self.route.pick_now(exchange)
        if target is None:
            return False
        raw = request.raw
        if (
            raw is not None
            and request.relayable
            and request.version == "1.1"
            # no empty line before or after it (llhttp skips CRs and LFs around a request,
            # and a head's last field line ends in neither): two bytes read, not a search
            and raw[0] not in _CRLF
            and raw[-5] not in _CRLF
        ):
            # as received, with the forwarding fields added (the common case, inline)
            if request.plain_connection is not None:
                raw = _without_field(raw, request.plain_connection)
            relayed = b"".join(
                (raw[:-2], request.forwarding_fields, self.route.request_fields(request), b"\r\n")
            )
            target.pool.send_now(exchange, request.method, relayed)
        else:
            target.pool.send_now(exchange, request.method, self.rebuilt_head(request))
        return True

    async def handle(self, request: Request) -> Response:
        return await ProxyExchange(self, request).forward(request)

    def rebuilt_head(self, request: Request) -> bytes:
        """The request's head as it goes upstream, rebuilt from its fields: when the
        client did not send it in one piece as HTTP/1.1, or something in it has to
        change (otherwise it goes as received, with the route's fields added)."""
        return request_bytes(
            request.method, request.target, self.request_fields(request), None, None
        )

    def request_fields(self, request: Request) -> hdrs.Headers:
        """The request's fields as they go upstream, built from its field list:
        end-to-end ones, X-Forwarded-For appended to, the route's replaced."""
        fields = hdrs.forwarding(request.headers, request.client[0], request.scheme)
        if self.route.replaced_fields:
            fields = hdrs.without(fields, self.route.replaced_fields)
        fields += hdrs.parse_lines(self.route.request_fields(request))
        return fields


def _without_field(raw: bytes, name: bytes) -> bytes:
    """A head less the one field line named `name`, spelled as received (llhttp has
    refused spaces before colons and bare LFs: "\r\n" + name + ":" starts that line)."""
    start = raw.find(b"\r\n%s:" % name)
    assert start > 0, "the parser saw the field"
    return raw[:start] + raw[raw.find(b"\r\n", start + 2) :]


def relayed_head(raw: bytes, added: bytes) -> bytes | None:
    """A whole answer's head as received, its Connection field removed, `added` (field
    lines) at its end and its final empty line left off, ready for the relay's framing;
    None when it has other hop-by-hop fields (Transfer-Encoding among them), or a
    Connection field that names some: the head is then rebuilt from its field list. An
    answer that ended before the connection did, without Transfer-Encoding, is framed by
    its Content-Length or has no body (HEAD, 1xx, 204, 304): its head frames the same
    bytes for the client."""
    end = len(raw) - 2
    found = _HOP_BY_HOP_FIELD.search(raw.lower(), 0, end)
    if found is None:
        return raw[:end] + added
    if found[1] is None:
        return None
    return b"".join((raw[: found.start()], raw[found.end(1) : end], added))
