"""The admin listener every role runs on its own address (`--admin HOST:PORT`), kept
private by the firewall:

    GET /healthz   200 "ok" or 503 with a one-line reason (what a balancer or systemd checks)
    GET /metrics   Prometheus text format, from prometheus-client's registry
    GET /status    JSON the role fills in

A role passes async callables for health and status, and may add routes of its own (the
database's `POST /promote`, the balancer's `/stats`).
"""

from __future__ import annotations

import bisect
import collections
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from foobar.http.server import Request, Response, Server, ServerConfig, error_response
from foobar.settings import HostPort

log = logging.getLogger("foobar.admin")

Health = Callable[[], Awaitable[tuple[bool, str]]]
Status = Callable[[], Awaitable[Mapping[str, Any]]]
Route = Callable[[Request], Awaitable[Response]]

# The admin API is small JSON and Prometheus text; a large body is a mistake or an attack.
MAX_ADMIN_BODY = 64 * 1024


def json_response(status: int, data: Any) -> Response:
    body = json.dumps(data, indent=2, default=str).encode() + b"\n"
    return Response(status, [(b"Content-Type", b"application/json")], body)


class PlainCounter:
    """A Prometheus counter family kept as plain numbers and read when /metrics is
    scraped, for what is counted per request: prometheus_client's Counter takes a lock and
    three calls per inc(), which a single-threaded event loop does not need (HAProxy
    keeps its counters the same way). Count with `counter.values[label_values] += n`,
    label values as a tuple in the order of `labels`."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.values: collections.Counter[tuple[object, ...]] = collections.Counter()
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for label_values, value in self.values.items():
            family.add_metric([str(label) for label in label_values], value)
        yield family


class PlainHistogram:
    """A Prometheus histogram kept as plain numbers, per label values, for what is timed
    per request (PlainCounter's reasons): `histogram.observe(label_values, seconds)`.
    Buckets as prometheus_client's defaults."""

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
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        # per label values: [count in each bucket (the last: above them all), sum]
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        registry.register(self)

    def observe(self, label_values: tuple[str, ...], value: float) -> None:
        series = self.series.get(label_values)
        if series is None:
            series = self.series[label_values] = ([0] * (len(self.BUCKETS) + 1), [0.0])
        series[0][bisect.bisect_left(self.BUCKETS, value)] += 1
        series[1][0] += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for label_values, (counts, total) in self.series.items():
            cumulative, buckets = 0, []
            for bound, count in zip((*self.BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            family.add_metric(list(label_values), buckets, total[0])
        yield family


class Admin:
    def __init__(
        self,
        health: Health,
        status: Status,
        registry: CollectorRegistry = REGISTRY,
        routes: Mapping[tuple[str, bytes], Route] | None = None,
        fallback: Route | None = None,
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
        self.server = Server(self.handle, ServerConfig(max_body_bytes=MAX_ADMIN_BODY))

    async def start(self, address: HostPort) -> None:
        await self.server.start(address.host, address.port)
        host, port = self.server.address
        log.info("event=admin_listening address=%s:%d", host, port)

    async def shutdown(self) -> None:
        await self.server.shutdown(drain_timeout=2.0)

    async def handle(self, request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        route = self.routes.get((method, request.path))
        if route is not None:
            return await route(request)
        if self.fallback is not None:
            return await self.fallback(request)
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
