"""The admin listener over a real socket, read with httpx as an operator's tools would."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from foobar.admin import Admin, PlainCounter, json_response
from foobar.http.server import Request, Response
from foobar.settings import HostPort


class Role:
    """Stands for a role: its health flips, its status and metrics are its own."""

    def __init__(self) -> None:
        self.healthy = True
        self.registry = CollectorRegistry()
        self.requests = Counter("foobar_test_requests", "requests", registry=self.registry)
        self.responses = PlainCounter(
            "foobar_test_responses", "by status", ["frontend", "status"], self.registry
        )

    async def health(self) -> tuple[bool, str]:
        return (True, "2 of 2 upstreams up") if self.healthy else (False, "no upstream is up")

    async def status(self) -> Mapping[str, Any]:
        return {"role": "test", "upstreams": [{"name": "a", "up": self.healthy}]}


@pytest.fixture
async def admin() -> AsyncIterator[tuple[Role, str]]:
    role = Role()

    async def promote(request: Request) -> Response:
        return json_response(200, {"promoted": (await request.body.read()).decode()})

    admin = Admin(role.health, role.status, role.registry, {("POST", b"/promote"): promote})
    await admin.start(HostPort("127.0.0.1", 0))
    host, port = admin.server.address
    yield role, f"http://{host}:{port}"
    await admin.shutdown()


async def test_healthz_follows_the_role(admin: tuple[Role, str]) -> None:
    role, url = admin
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/healthz")
        assert (response.status_code, response.text) == (200, "ok: 2 of 2 upstreams up\n")
        role.healthy = False
        response = await client.get("/healthz")
        assert (response.status_code, response.text) == (503, "unhealthy: no upstream is up\n")


async def test_metrics_in_prometheus_format(admin: tuple[Role, str]) -> None:
    role, url = admin
    role.requests.inc(3)
    role.responses.values[("www", 200)] += 2
    role.responses.values[("www", 503)] += 1
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain; version=")
        assert "foobar_test_requests_total 3.0" in response.text
        assert 'foobar_test_responses_total{frontend="www",status="200"} 2.0' in response.text
        assert 'foobar_test_responses_total{frontend="www",status="503"} 1.0' in response.text
        role.responses.values[("www", 200)] += 1  # read again at each scrape
        response = await client.get("/metrics")
        assert 'foobar_test_responses_total{frontend="www",status="200"} 3.0' in response.text


async def test_status_json_and_extra_route(admin: tuple[Role, str]) -> None:
    _, url = admin
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/status")).json() == {
            "role": "test",
            "upstreams": [{"name": "a", "up": True}],
        }
        response = await client.post("/promote", content=b"replica")
        assert response.json() == {"promoted": "replica"}


async def test_unknown_path_404_and_wrong_method_405(admin: tuple[Role, str]) -> None:
    _, url = admin
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/nope")).status_code == 404
        response = await client.post("/healthz")
        assert response.status_code == 405 and response.headers["allow"] == "GET"
        response = await client.get("/promote")
        assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_plain_histogram_exports_what_prometheus_client_would() -> None:
    """The same exposition as prometheus_client's Histogram for the same observations
    (less its _created sample): cumulative buckets, +Inf, count and sum."""
    from prometheus_client import Histogram, generate_latest

    from foobar.admin import PlainHistogram

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    plain = PlainHistogram("x_seconds", "time", ["upstream"], ours)
    reference = Histogram("x_seconds", "time", ["upstream"], registry=theirs)
    for value in (0.001, 0.005, 0.02, 0.3, 0.3, 4.0, 12.0):
        plain.observe(("a",), value)
        reference.labels("a").observe(value)

    def samples(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return sorted(line for line in text.splitlines() if "_created" not in line)

    assert samples(ours) == samples(theirs)
