"""The reverse proxy to the app servers, as nginx's `proxy_pass` to an `upstream` block
with `keepalive`. The forwarding itself (the fast path, the hand-over to a task, attempts,
relaying with backpressure) is foobar.http.forward's; this module is nginx's rules for it,
as a `Route`:

- round-robin over the servers; one that failed `max_fails` times is skipped for
  `fail_timeout` (passive checks), and all skipped means 502 at once;
- `proxy_next_upstream error timeout http_502`: each server in turn gets one attempt
  while the engine's retry rule allows it (after a connect failure any request, after an
  error, a timeout or a 502 an idempotent request without a body);
- X-Forwarded-For (appended) and X-Forwarded-Proto by the engine, X-Forwarded-Host and
  X-Real-IP set here, X-Foobar-Web added to the response.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from foobar.admin import HistogramSeries, PlainHistogram
from foobar.http.client import PoolConfig, UpstreamPool
from foobar.http.errors import HTTPError
from foobar.http.forward import STATUS, Forwarder, ProxyExchange
from foobar.http.server import Request, Response
from foobar.settings import HostPort

log = logging.getLogger("foobar.web.proxy")


@dataclass
class Upstream:
    address: HostPort
    pool: UpstreamPool
    latency: HistogramSeries  # its foobar_web_upstream_seconds
    fails: int = 0
    down_until: float = 0.0
    label: str = ""  # str(address), formatted once: the access log names it per request

    def __post_init__(self) -> None:
        self.label = str(self.address)

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
        self.latency = PlainHistogram(
            "foobar_web_upstream_seconds",
            "time to the upstream's response head",
            ["upstream"],
            registry,
        )


class UpstreamGroup:
    """The upstream block: its servers, nginx's rules as the engine's route."""

    replaced_fields = frozenset({b"x-real-ip", b"x-forwarded-host"})

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
                self.metrics.latency.series_for((str(address),)),
            )
            for address in addresses
        ]
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self.name = name.encode()
        self._added_lines = b"X-Foobar-Web: %s\r\n" % self.name
        self._turn = itertools.count()
        # request_fields()'s last answer, and for which (client address, Host)
        self._fields_for: tuple[str, bytes | None] = ("", None)
        self._fields = b""
        # the usable upstreams, made anew when one goes down or its fail_timeout ends
        self._usable: list[Upstream] = []
        self._usable_until = 0.0  # time.monotonic() until which `_usable` holds
        self.forwarder = Forwarder(self)
        # the core's handlers (see foobar.http.forward): the engine's, with this route
        self.answer_now = self.forwarder.answer_now
        self.handle = self.forwarder.handle

    def usable(self, now: float | None = None) -> list[Upstream]:
        """The upstreams not marked down (a list nobody changes: requests keep it), at
        `now` (time.monotonic(); read here if not given)."""
        if now is None:
            now = time.monotonic()
        if now < self._usable_until:
            return self._usable
        self._usable = [upstream for upstream in self.upstreams if upstream.usable(now)]
        ends = [upstream.down_until for upstream in self.upstreams if upstream.down_until > now]
        self._usable_until = min(ends, default=math.inf)
        return self._usable

    def _failed(self, upstream: Upstream, kind: str, reason: str) -> None:
        self.metrics.errors.labels(upstream.label, kind).inc()
        upstream.fails += 1
        if upstream.fails >= self.max_fails:
            upstream.down_until = time.monotonic() + self.fail_timeout
            upstream.fails = 0
            self._usable_until = 0.0
            log.warning(
                "event=upstream_down upstream=%s for=%.0fs reason=%r",
                upstream.label,
                self.fail_timeout,
                reason,
            )

    # the route

    def plan(self, exchange: ProxyExchange[Upstream]) -> tuple[list[Upstream], int]:
        """The usable upstreams when the request came, and its turn among them: attempt N
        goes to `usable[(turn + N) % len(usable)]`, each upstream once at most."""
        if exchange.plan is None:
            self.pick_now(exchange)  # makes it (upstreams have no slots: nothing is taken)
        return exchange.plan  # type: ignore[return-value]

    def pick_now(self, exchange: ProxyExchange[Upstream]) -> Upstream | None:
        # the plan (a new exchange has none yet), by the clock the fast path read for its
        # attempt (the task path makes it before its attempt starts: `started` is 0 then)
        usable = self.usable(exchange.started or None)
        if not usable:
            exchange.plan = (usable, 0)
            return None
        turn = next(self._turn) % len(usable)
        exchange.plan = (usable, turn)
        return usable[turn]

    async def pick(self, exchange: ProxyExchange[Upstream]) -> Upstream:
        usable, turn = self.plan(exchange)
        if exchange.attempt >= len(usable):
            raise HTTPError("no upstream is available", 502)
        return usable[(turn + exchange.attempt) % len(usable)]

    def may_retry(self, exchange: ProxyExchange[Upstream], kind: str) -> bool:
        return exchange.attempt < len(self.plan(exchange)[0])

    def failed(
        self, exchange: ProxyExchange[Upstream], upstream: Upstream, kind: str, reason: str
    ) -> None:
        self._failed(upstream, "502" if kind == STATUS else kind, reason)

    def answered(
        self, exchange: ProxyExchange[Upstream], upstream: Upstream, status: int, seconds: float
    ) -> bytes | None:
        if (
            status == 502
            and exchange.replayable
            and exchange.attempt + 1 < len(self.plan(exchange)[0])
        ):
            return None  # `proxy_next_upstream http_502`: the next upstream's turn
        upstream.latency.observe(seconds)
        upstream.fails = 0
        return self._added_lines

    def release(self, exchange: ProxyExchange[Upstream], upstream: Upstream) -> None:
        pass  # nginx's upstreams have no slots here: `max_conns` is not built

    def request_fields(self, request: Request) -> bytes:
        # the last request's, when it came from the same address for the same host (the
        # rule on a keep-alive connection): formatting costs more than the comparison
        key = (request.client[0], request.host)
        if key != self._fields_for:
            ip, host = key
            real_ip = b"X-Real-IP: %s\r\n" % ip.encode()
            forwarded_host = b"" if host is None else b"X-Forwarded-Host: %s\r\n" % host
            self._fields_for, self._fields = key, real_ip + forwarded_host
        return self._fields

    def error(self, status: int, detail: str) -> Response:
        log.info("event=proxy_error status=%d reason=%r", status, detail)
        body = b"%d %s\n" % (status, b"Bad Gateway" if status == 502 else b"Gateway Timeout")
        return Response(
            status, [(b"Content-Type", b"text/plain"), (b"X-Foobar-Web", self.name)], body
        )

    async def close(self) -> None:
        for upstream in self.upstreams:
            await upstream.pool.close()
