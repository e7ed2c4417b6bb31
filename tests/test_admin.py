"""The admin listener over a real socket, read with httpx as an operator's tools would."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from foobar.admin import (
    Admin,
    AdminGuard,
    PlainCounter,
    ResponseCounters,
    json_response,
    split_host,
)
from foobar.http.server import Request, Response, Server
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


TOKEN = "a-token-long-enough-to-count"
AUTHORIZED = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


@pytest.fixture
async def admin() -> AsyncIterator[tuple[Role, str]]:
    role = Role()

    async def promote(request: Request) -> Response:
        return json_response(200, {"promoted": (await request.body.read()).decode()})

    admin = Admin(
        role.health,
        role.status,
        role.registry,
        {("POST", b"/promote"): promote},
        guard=AdminGuard(TOKEN, ["admin.foobar.internal"]),
    )
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


async def test_response_counts_kept_by_the_core_are_scraped() -> None:
    """A server counts its responses by status and the body bytes it sent, on the fast
    path and the task path alike; the tier's metrics read them at each scrape."""
    registry = CollectorRegistry()
    counters = ResponseCounters("foobar_test", ["frontend"], registry)

    async def handler(request: Request) -> Response:
        return Response(404 if request.path == b"/missing" else 200, body=b"hello")

    def fast_handler(request: Request) -> bool:
        if request.path != b"/fast":
            return False
        request.respond(Response(200, body=b"fast!!"))
        return True

    server = Server(handler, fast_handler=fast_handler)
    counters.counts[("www",)] = server.counts
    await server.start("127.0.0.1", 0)
    host, port = server.address
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            for path in ("/fast", "/", "/missing", "/fast"):
                await client.get(path)
        text = generate_latest(registry).decode()
        assert 'foobar_test_requests_total{frontend="www",status="200"} 3.0' in text
        assert 'foobar_test_requests_total{frontend="www",status="404"} 1.0' in text
        assert 'foobar_test_sent_bytes_total{frontend="www"} 22.0' in text
    finally:
        await server.shutdown(1.0)


async def test_status_json_and_extra_route(admin: tuple[Role, str]) -> None:
    _, url = admin
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/status")).json() == {
            "role": "test",
            "upstreams": [{"name": "a", "up": True}],
        }
        response = await client.post("/promote", content=b'"replica"', headers=AUTHORIZED)
        assert response.json() == {"promoted": '"replica"'}


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
    held = plain.series_for(("b",))  # a series kept by its user, observed without a look-up
    for value in (0.001, 0.005, 0.02, 0.3, 0.3, 4.0, 12.0):
        plain.observe(("a",), value)
        reference.labels("a").observe(value)
        held.observe(value / 2)
        reference.labels("b").observe(value / 2)

    def samples(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return sorted(line for line in text.splitlines() if "_created" not in line)

    assert samples(ours) == samples(theirs)


# What a change request carries that differs from AUTHORIZED (PORT: the listener's port),
# and the answer.
CHANGE_CASES = [
    # what a page in a browser can send cross-site without asking: no token, text/plain
    ({"Authorization": "", "Content-Type": "text/plain"}, 401),
    ({"Authorization": "Bearer a-token-long-enough-to-coun7"}, 401),
    ({"Authorization": f"Basic {TOKEN}"}, 401),
    ({"Content-Type": "text/plain"}, 415),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
    # DNS rebinding: the attacker's name now points at 127.0.0.1, the Host stays theirs
    ({"Host": "attacker.example:PORT"}, 421),
    ({"Host": "127.0.0.1:1"}, 421),
    ({"Host": "Admin.Foobar.Internal:PORT"}, 200),  # a configured name
    ({"Content-Type": "application/json; charset=utf-8"}, 200),
]


async def test_changes_need_the_token_json_and_the_listeners_own_host(
    admin: tuple[Role, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, url = admin
    port = url.rsplit(":", 1)[1]
    async with httpx.AsyncClient(base_url=url) as client:
        for changed, status in CHANGE_CASES:
            headers = {**AUTHORIZED, **changed}
            headers = {k: v.replace("PORT", port) for k, v in headers.items() if v}
            response = await client.post("/promote", content=b"{}", headers=headers)
            assert response.status_code == status, changed
            if status == 401:
                assert response.headers["www-authenticate"] == 'Bearer realm="foobar admin"'
        refused = [status for _, status in CHANGE_CASES if status != 200]
        assert caplog.text.count("event=admin_refused") == len(refused)
        # reading stays open
        for path in ("/healthz", "/metrics", "/status"):
            assert (await client.get(path)).status_code == 200


async def test_without_a_configured_token_nothing_changes() -> None:
    role = Role()
    calls = []

    async def promote(request: Request) -> Response:
        calls.append(request)
        return json_response(200, {})

    admin = Admin(role.health, role.status, role.registry, {("POST", b"/promote"): promote})
    await admin.start(HostPort("127.0.0.1", 0))
    host, port = admin.server.address
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            response = await client.post("/promote", content=b"{}", headers=AUTHORIZED)
            assert response.status_code == 401 and "no admin token" in response.json()["error"]
            assert (await client.get("/status")).status_code == 200
    finally:
        await admin.shutdown()
    assert calls == []


@pytest.mark.parametrize(
    ("host", "listening", "allowed"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100), True),
        ("127.0.0.1", ("127.0.0.1", 9100), True),
        ("127.0.0.2:9100", ("127.0.0.1", 9100), False),
        ("127.0.0.1:9101", ("127.0.0.1", 9100), False),
        ("localhost:9100", ("127.0.0.1", 9100), False),
        ("[::1]:9100", ("::1", 9100), True),
        ("[::1]:9100", ("127.0.0.1", 9100), False),
        ("10.0.0.1:9100", ("0.0.0.0", 9100), True),  # all addresses: any literal one
        ("evil.example:9100", ("0.0.0.0", 9100), False),
        ("stats.lb1:9100", ("10.0.0.1", 9100), True),
        ("stats.lb1.evil.example:9100", ("10.0.0.1", 9100), False),
        ("127.0.0.1:9100:1", ("127.0.0.1", 9100), False),
        ("127.0.0.1:x", ("127.0.0.1", 9100), False),
        ("", ("127.0.0.1", 9100), False),
    ],
)
def test_host_rule(host: str, listening: tuple[str, int], allowed: bool) -> None:
    guard = AdminGuard(TOKEN, ["stats.lb1"])
    assert guard.host_allowed(host.encode(), listening) is allowed


def test_split_host() -> None:
    assert split_host("a.example:80") == ("a.example", 80)
    assert split_host("[::1]") == ("::1", None)
    assert split_host("[::1]x") is None
    assert split_host(":80") is None
