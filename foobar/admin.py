"""The admin listener every role runs on its own address (`--admin HOST:PORT`), kept
private by the firewall:

    GET /healthz   200 "ok" or 503 with a one-line reason (what a balancer or systemd checks)
    GET /metrics   Prometheus text format, from prometheus-client's registry
    GET /status    JSON the role fills in

A role passes async callables for health and status, and may add routes of its own (the
database's `POST /promote`, the balancer's `/stats`).

Reading stays open on the admin address; changing the running system does not
(HAProxy's `stats auth` and `stats admin if`). A request with any other method than GET
or HEAD to a route that exists is answered, in this order:

    421  its Host is not the listener's own address or one of `admin_names` (a browser
         page reaching the port by a name it rebound, DNS rebinding)
    401  no `Authorization: Bearer <admin token>`, a wrong one, or no token configured
         (then nothing can change the system through this listener)
    415  a Content-Type other than application/json (a plain HTML form or a text/plain
         fetch, which a browser sends cross-site without asking)
"""

from __future__ import annotations

import bisect
import collections
import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from foobar.http.server import (
    Request,
    Response,
    ResponseCounts,
    Server,
    ServerConfig,
    error_response,
)
from foobar.settings import HostPort

log = logging.getLogger("foobar.admin")

Health = Callable[[], Awaitable[tuple[bool, str]]]
Status = Callable[[], Awaitable[Mapping[str, Any]]]
Route = Callable[[Request], Awaitable[Response]]

# The admin API is small JSON and Prometheus text; a large body is a mistake or an attack.
MAX_ADMIN_BODY = 64 * 1024


# Methods that only read; every other one changes something and is guarded.
READ_METHODS = frozenset({"GET", "HEAD"})


def json_response(status: int, data: Any) -> Response:
    body = json.dumps(data, indent=2, default=str).encode() + b"\n"
    return Response(status, [(b"Content-Type", b"application/json")], body)


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host field value as (host, port or None); None when it is not one."""
    host, port = value, None
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        rest = rest[1:]
    else:
        host, _, rest = value.rpartition(":") if ":" in value else (value, "", "")
    if rest:
        if not rest.isdigit() or len(rest) > 5:
            return None
        port = int(rest)
    return (host.lower(), port) if host else None


class AdminGuard:
    """Decides whether a state-changing admin request may run (see the module's
    docstring for the answers). `token` None means no change is accepted at all."""

    def __init__(self, token: str | None, names: Sequence[str] = ()) -> None:
        self._token = token.encode() if token else None
        self.names = frozenset(name.lower() for name in names)

    def host_allowed(self, value: bytes | None, listening: tuple[str, int]) -> bool:
        """The listener's own address (any address literal when it listens on all of
        them: a rebinding page always arrives by a name) or a configured name, with the
        listener's port when a port is given."""
        parsed = split_host(value.decode("latin-1")) if value else None
        if parsed is None:
            return False
        host, port = parsed
        own_host, own_port = listening
        if port is not None and port != own_port:
            return False
        if host in self.names:
            return True
        if own_host in ("0.0.0.0", "::"):
            return is_ip_literal(host)
        return is_ip_literal(host) and ipaddress.ip_address(host) == ipaddress.ip_address(own_host)

    def token_valid(self, value: bytes | None) -> bool:
        if self._token is None or value is None:
            return False
        scheme, _, credentials = value.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credentials.strip(), self._token)

    def refuse(self, request: Request, listening: tuple[str, int]) -> Response | None:
        """The answer refusing `request`, or None when it may go on."""
        if not self.host_allowed(request.header(b"host"), listening):
            return json_response(421, {"error": "this admin listener does not answer that Host"})
        if not self.token_valid(request.header(b"authorization")):
            reason = (
                "an admin token is required (Authorization: Bearer ...)"
                if self._token is not None
                else "no admin token is configured (admin_token or admin_token_file), "
                "so nothing can be changed here"
            )
            response = json_response(401, {"error": reason})
            response.headers.append((b"WWW-Authenticate", b'Bearer realm="foobar admin"'))
            return response
        content_type = request.header(b"content-type") or b""
        if content_type.partition(b";")[0].strip().lower() != b"application/json":
            return json_response(415, {"error": "the body must be application/json"})
        return None


def admin_headers(host: str, token: str | None) -> list[tuple[bytes, bytes]]:
    """The request headers a command-line tool sends for a state-changing call."""
    headers = [(b"Host", host.encode()), (b"Content-Type", b"application/json")]
    if token:
        headers.append((b"Authorization", b"Bearer " + token.encode()))
    return headers


class _PlainFamily(Collector):
    """A metric family kept as plain numbers and read when /metrics is scraped, for what
    changes per request: prometheus_client's metrics take a lock and several calls per
    update, which a single-threaded event loop does not need (HAProxy keeps its counters
    the same way)."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        registry.register(self)


class PlainCounter(_PlainFamily):
    """A counter family: count with `counter.values[label_values] += n`, label values as
    a tuple in the order of `labels`."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], registry: CollectorRegistry
    ) -> None:
        # a defaultdict, not a Counter: `+=` on a Counter item measured twice the
        # instructions (callgrind, CPython 3.11: ~1,900 against ~1,000), once per request
        self.values: collections.defaultdict[tuple[object, ...], int] = collections.defaultdict(int)
        super().__init__(name, documentation, labels, registry)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for label_values, value in self.values.items():
            family.add_metric([str(label) for label in label_values], value)
        yield family


class ResponseCounters(_PlainFamily):
    """The HTTP core's counts (`ResponseCounts`, kept by each `Server` as it answers) as
    two counter families: `{role}_requests` by status, and `{role}_sent_bytes`. `counts`
    maps the values of the tier's own labels (before `status`) to a server's counts."""

    def __init__(self, role: str, labels: Sequence[str], registry: CollectorRegistry) -> None:
        self.counts: dict[tuple[str, ...], ResponseCounts] = {}
        self.role = role
        super().__init__(f"{role}_requests", "responses by status", [*labels, "status"], registry)

    def collect(self) -> Iterator[Metric]:
        responses = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        sent = CounterMetricFamily(
            f"{self.role}_sent_bytes", "response body bytes sent", labels=self.labels[:-1]
        )
        for label_values, counts in self.counts.items():
            for status, value in counts.statuses():
                responses.add_metric([*label_values, str(status)], value)
            sent.add_metric(list(label_values), counts.sent)
        yield responses
        yield sent


class PlainHistogram(_PlainFamily):
    """A histogram family: `histogram.observe(label_values, seconds)`, buckets as
    prometheus_client's defaults."""

    BUCKETS: tuple[float, ...] = (
        0.005,
        0.01,
        0.025,
        0.05,
        0.075,
        0.1,
        0.25,
        0.5,
        0.75,
        1.0,
        2.5,
        5.0,
        7.5,
        10.0,
    )

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.series: dict[tuple[str, ...], HistogramSeries] = {}
        super().__init__(name, documentation, labels, registry)

    def series_for(self, label_values: tuple[str, ...]) -> HistogramSeries:
        """One series, to observe in it without looking it up each time."""
        series = self.series.get(label_values)
        if series is None:
            series = self.series[label_values] = HistogramSeries(self.BUCKETS)
        return series

    def observe(self, label_values: tuple[str, ...], value: float) -> None:
        self.series_for(label_values).observe(value)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for label_values, series in self.series.items():
            cumulative, buckets = 0, []
            bounds = (*self.BUCKETS, float("inf"))
            for bound, count in zip(bounds, series.counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            family.add_metric(list(label_values), buckets, series.total)
        yield family


class HistogramSeries:
    """One histogram series as plain numbers: the count in each bucket (the last: above
    them all) and the sum."""

    __slots__ = ("buckets", "counts", "total")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value


class Admin:
    def __init__(
        self,
        health: Health,
        status: Status,
        registry: CollectorRegistry = REGISTRY,
        routes: Mapping[tuple[str, bytes], Route] | None = None,
        fallback: Route | None = None,
        guard: AdminGuard | None = None,
    ) -> None:
        self.health = health
        self.status = status
        self.registry = registry
        self.routes: dict[tuple[str, bytes], Route] = {
            ("GET", b"/healthz"): self._healthz,
            ("GET", b"/metrics"): self._metrics,
            ("GET", b"/status"): self._status,
            **(routes or {}),
        }
        self.fallback = fallback  # for paths with parameters, e.g. /servers/{backend}/{server}
        self.guard = guard or AdminGuard(None)
        self.server = Server(self.handle, ServerConfig(max_body_bytes=MAX_ADMIN_BODY))

    async def start(self, address: HostPort) -> None:
        await self.server.start(address.host, address.port)
        host, port = self.server.address
        log.info("event=admin_listening address=%s:%d", host, port)

    async def shutdown(self) -> None:
        await self.server.shutdown(drain_timeout=2.0)

    async def handle(self, request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        route = self.routes.get((method, request.path)) or self.fallback
        if route is not None:
            if method not in READ_METHODS:
                refusal = self.guard.refuse(request, self.server.address)
                if refusal is not None:
                    log.warning(
                        "event=admin_refused status=%d peer=%s method=%s path=%r",
                        refusal.status,
                        request.client_ip,
                        request.method,
                        request.path.decode("latin-1"),
                    )
                    return refusal
            return await route(request)
        allowed = sorted(m for m, path in self.routes if path == request.path)
        if allowed:
            response = error_response(405)
            response.headers.append((b"Allow", ", ".join(allowed).encode()))
            return response
        return error_response(404)

    async def _healthz(self, request: Request) -> Response:
        healthy, reason = await self.health()
        body = f"{'ok' if healthy else 'unhealthy'}: {reason}\n".encode()
        return Response(
            200 if healthy else 503, [(b"Content-Type", b"text/plain; charset=utf-8")], body
        )

    async def _metrics(self, request: Request) -> Response:
        return Response(
            200, [(b"Content-Type", CONTENT_TYPE_LATEST.encode())], generate_latest(self.registry)
        )

    async def _status(self, request: Request) -> Response:
        return json_response(200, dict(await self.status()))
