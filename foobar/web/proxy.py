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
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from foobar.http import headers as hdrs
from foobar.http.client import IDEMPOTENT, PoolConfig, UpstreamPool, UpstreamResponse, relay_body
from foobar.http.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
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

    @property
    def name(self) -> str:
        return str(self.address)

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

    async def handle(self, request: Request) -> Response:
        head = request.head
        headers = hdrs.forwarding(head.headers, request.client[0], request.scheme)
        headers = hdrs.without(headers, (b"x-real-ip", b"x-forwarded-host"))
        headers.append((b"X-Real-IP", request.client[0].encode()))
        host = request.header(b"host")
        if host is not None:
            headers.append((b"X-Forwarded-Host", host))
        has_body = head.has_body
        retry_on_answer = head.method in IDEMPOTENT and not has_body
        attempts = self._candidates()
        if not attempts:
            return self.error(502, "no upstream is available")
        last_status = 502
        for upstream in attempts:
            started = time.monotonic()
            try:
                response = await upstream.pool.request(
                    head.method,
                    head.target,
                    headers,
                    request.body if has_body else None,
                    head.content_length,
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
            elapsed = time.monotonic() - started
            upstream.latency.observe(elapsed)
            request.upstream.update({"ua": upstream.name, "us": response.status, "urt": elapsed})
            if response.status == 502 and retry_on_answer and upstream is not attempts[-1]:
                await response.aclose()
                self._failed(upstream, "502", UpstreamError("answered 502"))
                continue
            upstream.fails = 0
            return self.relay(response)
        return self.error(last_status, "every upstream failed")

    def relay(self, response: UpstreamResponse) -> Response:
        headers = hdrs.end_to_end(response.headers)
        body, framing = relay_body(response, lambda: None)
        headers += framing
        headers.append((b"X-Foobar-Web", self.name))
        return Response(response.status, headers, body, response.head.reason)

    def error(self, status: int, detail: str) -> Response:
        log.info("event=proxy_error status=%d reason=%r", status, detail)
        body = b"%d %s\n" % (status, b"Bad Gateway" if status == 502 else b"Gateway Timeout")
        return Response(
            status, [(b"Content-Type", b"text/plain"), (b"X-Foobar-Web", self.name)], body
        )

    async def close(self) -> None:
        for upstream in self.upstreams:
            await upstream.pool.close()
