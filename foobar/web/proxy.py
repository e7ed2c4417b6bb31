"""The reverse proxy to the app servers, as nginx's `proxy_pass` to an `upstream` block
with `keepalive`:

- round-robin over the servers; one that failed `max_fails` times is skipped for
  `fail_timeout` (passive checks), and all skipped means 502 at once;
- the next server is tried after a connect failure (any method: nothing was sent), and
  after a 502 or a timeout for idempotent requests without a body; never once a byte of
  the response went to the client;
- X-Forwarded-For (appended), X-Forwarded-Proto, X-Forwarded-Host and X-Real-IP set,
  hop-by-hop headers dropped, X-Foobar-Web added to the response;
- bodies streamed both ways with the core's backpressure.

A request without a body takes the fast path when it can (`answer_now`), as in the
balancer: forwarded on an idle pooled connection and answered from the upstream's
callback; whatever has to wait goes on in `forward()` from the point it reached.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from foobar.http import headers as hdrs
from foobar.http.client import (
    IDEMPOTENT,
    PoolConfig,
    UpstreamConnection,
    UpstreamPool,
    relay_body,
    whole_body,
)
from foobar.http.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from foobar.http.parser import ResponseHead
from foobar.http.server import Request, Response
from foobar.settings import HostPort

log = logging.getLogger("foobar.web.proxy")


@dataclass
class Upstream:
    address: HostPort
    pool: UpstreamPool
    latency: Any  # its child of foobar_web_upstream_seconds: labels() once, not per request
    fails: int = 0
    down_until: float = 0.0
    name: str = ""  # str(address), formatted once: the access log names it per request

    def __post_init__(self) -> None:
        self.name = str(self.address)

    def usable(self, now: float) -> bool:
        return now >= self.down_until


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.errors = Counter(
            "foobar_web_upstream_errors",
            "failed attempts by upstream and kind",
            ["upstream", "kind"],
            registry=registry,
        )
        self.latency = Histogram(
            "foobar_web_upstream_seconds",
            "time to the upstream's response head",
            ["upstream"],
            registry=registry,
        )


class UpstreamGroup:
    def __init__(
        self,
        addresses: list[HostPort],
        pool_config: PoolConfig,
        max_fails: int,
        fail_timeout: float,
        name: str,
        registry: CollectorRegistry,
    ) -> None:
        self.metrics = ProxyMetrics(registry)
        self.upstreams = [
            Upstream(
                address,
                UpstreamPool(address.host, address.port, pool_config),
                self.metrics.latency.labels(str(address)),
            )
            for address in addresses
        ]
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self.name = name.encode()
        self._turn = itertools.count()

    def usable(self) -> list[Upstream]:
        now = time.monotonic()
        return [upstream for upstream in self.upstreams if upstream.usable(now)]

    def _candidates(self) -> list[Upstream]:
        """Usable servers in round-robin order from the next one's turn."""
        usable = self.usable()
        if not usable:
            return []
        first = next(self._turn) % len(usable)
        return usable[first:] + usable[:first]

    def _failed(self, upstream: Upstream, kind: str, error: Exception) -> None:
        self.metrics.errors.labels(upstream.name, kind).inc()
        upstream.fails += 1
        if upstream.fails >= self.max_fails:
            upstream.down_until = time.monotonic() + self.fail_timeout
            upstream.fails = 0
            log.warning(
                "event=upstream_down upstream=%s for=%.0fs reason=%r",
                upstream.name,
                self.fail_timeout,
                str(error),
            )

    def forwarded_headers(self, request: Request) -> hdrs.Headers:
        headers = hdrs.forwarding(request.head.headers, request.client[0], request.scheme)
        headers = hdrs.without(headers, (b"x-real-ip", b"x-forwarded-host"))
        headers.append((b"X-Real-IP", request.client[0].encode()))
        host = request.header(b"host")
        if host is not None:
            headers.append((b"X-Forwarded-Host", host))
        return headers

    # the fast path

    def answer_now(self, request: Request) -> bool:
        """The core's fast handler for a proxied request without a body: sent at once on
        an idle pooled connection, answered from the upstream's callback. The rest, and
        whatever has to wait, goes on in `forward()`."""
        attempts = self._candidates()
        if not attempts:
            return False
        headers = self.forwarded_headers(request)
        head = request.head
        started = time.monotonic()
        attempts[0].pool.send_now(
            head.method,
            head.target,
            headers,
            lambda reply, body: self.answer_arrived(
                request, headers, attempts, reply, body, started
            ),
            lambda sent: request.continue_in_task(
                lambda request: self.forward(request, headers, attempts, sent, started)
            ),
        )
        return True

    def answer_arrived(
        self,
        request: Request,
        headers: hdrs.Headers,
        attempts: list[Upstream],
        head: ResponseHead,
        body: bytes,
        started: float,
    ) -> None:
        """The whole answer to a fast-path request arrived: relay it from the callback,
        unless it is a 502 the next upstream should get a chance at."""
        upstream = attempts[0]
        if self.next_upstream_after(request, upstream, head.status, attempts):
            request.continue_in_task(lambda request: self.forward(request, headers, attempts[1:]))
            return
        self.answered(request, upstream, head.status, started)
        body, framing = whole_body(head, body)
        request.respond(self.relay(head, body, framing))

    # the task path

    async def handle(self, request: Request) -> Response:
        attempts = self._candidates()
        if not attempts:
            return self.error(502, "no upstream is available")
        return await self.forward(request, self.forwarded_headers(request), attempts)

    async def forward(
        self,
        request: Request,
        headers: hdrs.Headers,
        attempts: list[Upstream],
        sent: UpstreamConnection | None = None,
        sent_at: float = 0.0,
    ) -> Response:
        """Try `attempts` in turn by the rules above. The fast path joins with the
        connection its request was `sent` on (to the first of them) and when (`sent_at`)."""
        head = request.head
        has_body = head.has_body
        retry_on_answer = head.method in IDEMPOTENT and not has_body
        last_status = 502
        for upstream in attempts:
            try:
                started = sent_at if sent is not None else time.monotonic()
                connection, sent = sent, None  # a retry sends afresh
                response = await upstream.pool.request(
                    head.method,
                    head.target,
                    headers,
                    request.body if has_body else None,
                    head.content_length,
                    sent=connection,
                )
            except UpstreamConnectError as exc:  # nothing was sent: any method may go on
                self._failed(upstream, "connect", exc)
                last_status = exc.status
                continue
            except UpstreamError as exc:
                self._failed(
                    upstream, "timeout" if isinstance(exc, UpstreamTimeout) else "error", exc
                )
                last_status = exc.status
                if retry_on_answer and not exc.response_started:
                    continue
                return self.error(exc.status, str(exc))
            if self.next_upstream_after(request, upstream, response.status, attempts):
                if response.take_complete_body() is None:  # all here: the connection stays
                    await response.aclose()
                continue
            self.answered(request, upstream, response.status, started)
            body, framing = relay_body(response, lambda: None)
            return self.relay(response.head, body, framing)
        return self.error(last_status, "every upstream failed")

    # what both paths share

    def next_upstream_after(
        self, request: Request, upstream: Upstream, status: int, attempts: list[Upstream]
    ) -> bool:
        """nginx's `proxy_next_upstream error timeout http_502`, for a 502: True when the
        next upstream is to be tried (a request that can be sent again, one left)."""
        head = request.head
        if status != 502 or head.method not in IDEMPOTENT or head.has_body:
            return False
        if upstream is attempts[-1]:
            return False
        self._failed(upstream, "502", UpstreamError("answered 502"))
        return True

    def answered(self, request: Request, upstream: Upstream, status: int, started: float) -> None:
        elapsed = time.monotonic() - started
        upstream.latency.observe(elapsed)
        request.upstream.update({"ua": upstream.name, "us": status, "urt": elapsed})
        upstream.fails = 0

    def relay(
        self, head: ResponseHead, body: bytes | AsyncIterable[bytes], framing: hdrs.Headers
    ) -> Response:
        headers = hdrs.end_to_end(head.headers)
        headers += framing
        headers.append((b"X-Foobar-Web", self.name))
        return Response(head.status, headers, body, head.reason)

    def error(self, status: int, detail: str) -> Response:
        log.info("event=proxy_error status=%d reason=%r", status, detail)
        body = b"%d %s\n" % (status, b"Bad Gateway" if status == 502 else b"Gateway Timeout")
        return Response(
            status, [(b"Content-Type", b"text/plain"), (b"X-Foobar-Web", self.name)], body
        )

    async def close(self) -> None:
        for upstream in self.upstreams:
            await upstream.pool.close()
