"""HTTP mode over real sockets, with backends the tests start and kill."""

from __future__ import annotations

import asyncio
import collections
import json
import time

import httpx
import pytest

from foobar.http.server import Request, Response, Server
from foobar.lb.settings import LbSettings
from tests.conftest import RawClient, start_server, until
from tests.lb.conftest import StartLb, address_of, url_of

pytestmark = pytest.mark.timeout(60)

FAST_CHECK = {
    "kind": "http",
    "path": "/healthz",
    "inter": 0.1,
    "rise": 2,
    "fall": 2,
    "timeout": 0.5,
}


def lb_fields(
    *servers: str, algorithm: str = "roundrobin", check: dict | None = FAST_CHECK, **extra
):  # type: ignore[no-untyped-def]
    return {
        "frontends": [{"name": "default", "bind": "127.0.0.1:0", "backend": "web"}],
        "backends": [
            {
                "name": "web",
                "algorithm": algorithm,
                "servers": list(servers),
                "check": check,
                **extra,
            }
        ],
    }


async def test_forwarding_keep_alive_and_lb_header(
    start_lb: StartLb, servers: list[Server]
) -> None:
    seen: list[Request] = []

    async def upstream(request: Request) -> Response:
        seen.append(request)
        return Response(200, [(b"X-Backend", b"1")], b"hello")

    backend = await start_server(upstream)
    servers.append(backend)
    lb = await start_lb(**lb_fields(f"a=127.0.0.1:{backend.address[1]}", check=None))
    async with httpx.AsyncClient(base_url=url_of(lb)) as client:
        for _ in range(5):
            response = await client.get("/x?y=1", headers={"X-Forwarded-For": "203.0.113.5"})
            assert response.text == "hello"
            assert response.headers["x-foobar-lb"] == "lb1"
            assert response.headers["x-backend"] == "1"
    head = seen[0].headers
    names = {name.lower(): value for name, value in head}
    assert names[b"x-forwarded-for"] == b"203.0.113.5, 127.0.0.1"
    assert names[b"x-forwarded-proto"] == b"http"
    assert seen[0].target == b"/x?y=1"
    assert len(backend.state.connections) == 1  # server-side keep-alive: one connection
    assert lb.balancer.backends["web"].servers[0].pool.connections_made == 1


@pytest.mark.parametrize(
    ("connection", "forwarded"),
    [
        # a browser's: the head goes on as received, less that one line
        (b"Connection: keep-alive\r\n", [b"Host", b"X-A", b"X-Secret", b"X-B"]),
        (b"connection: close\r\n", [b"Host", b"X-A", b"X-Secret", b"X-B"]),
        # naming another field: that one is hop-by-hop too (rebuilt without both)
        (b"Connection: keep-alive, X-Secret\r\n", [b"Host", b"X-A", b"X-B"]),
        (
            b"Connection: close\r\nConnection: keep-alive\r\n",
            [b"Host", b"X-A", b"X-Secret", b"X-B"],
        ),
    ],
)
async def test_the_client_connection_field_stays_with_the_client(
    start_lb: StartLb, servers: list[Server], connection: bytes, forwarded: list[bytes]
) -> None:
    seen: list[Request] = []

    async def upstream(request: Request) -> Response:
        seen.append(request)
        return Response(200, body=b"ok")

    backend = await start_server(upstream)
    servers.append(backend)
    lb = await start_lb(**lb_fields(f"a=127.0.0.1:{backend.address[1]}", check=None))
    client = await RawClient.connect(address_of(lb))
    fields = b"Host: www\r\nX-A: 1\r\n%sX-Secret: 2\r\nX-B: 3\r\n" % connection
    for _ in range(2):  # kept alive: "close" is the client's word to the balancer only
        await client.send(b"GET / HTTP/1.1\r\n%s\r\n" % fields)
        status, _, body = await client.response()
        assert (status, body) == (200, b"ok")
        if b"close" in connection.split(b"\r\n")[0]:
            break
    names = [name for name, _ in seen[0].headers]
    assert names == [*forwarded, b"X-Forwarded-For", b"X-Forwarded-Proto"]


async def test_empty_lines_around_a_request_stay_with_the_client(start_lb: StartLb) -> None:
    """llhttp skips empty lines before a request line (RFC 9112 §2.2); a head that came
    with them in one read is rebuilt, not passed on as received with them."""
    received: list[bytes] = []

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.append(data)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    upstream = await asyncio.start_server(backend, "127.0.0.1", 0)
    try:
        port = upstream.sockets[0].getsockname()[1]
        lb = await start_lb(**lb_fields(f"a=127.0.0.1:{port}", check=None))
        client = await RawClient.connect(address_of(lb))
        for request in [
            b"\r\nGET /a HTTP/1.1\r\nHost: www\r\n\r\n",
            b"GET /b HTTP/1.1\r\nHost: www\r\n\r\n\r\n",
            b"GET /c HTTP/1.1\r\nHost: www\r\n\r\n",
        ]:
            await client.send(request)
            status, _, body = await client.response()
            assert (status, body) == (200, b"ok")
        assert [data[:7] for data in received] == [b"GET /a ", b"GET /b ", b"GET /c "]
        assert all(data.count(b"\r\n\r\n") == 1 for data in received), received
        assert all(data.endswith(b"\r\n\r\n") for data in received), received
    finally:
        upstream.close()


async def test_backend_killed_under_load(start_lb: StartLb, backends) -> None:  # type: ignore[no-untyped-def]
    started = [await backends(name) for name in ("a", "b", "c")]
    lb = await start_lb(**lb_fields(*(f"{b.name}={b.address}" for b in started)))
    web = lb.balancer.backends["web"]
    failures: list[str] = []
    served: collections.Counter[str] = collections.Counter()
    stop = asyncio.Event()

    async def visitor() -> None:
        async with httpx.AsyncClient(base_url=url_of(lb), timeout=5) as client:
            for _ in range(2000):  # bounded; the test stops it sooner
                if stop.is_set():
                    return
                try:
                    response = await client.get("/page?delay=0.005")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                else:
                    served[response.json()["server"]] += 1

    load = [asyncio.create_task(visitor()) for _ in range(8)]
    await asyncio.sleep(0.5)
    victim = started[1]
    victim.kill()
    killed_at = time.monotonic()
    while web.server("b").up:  # type: ignore[union-attr]
        await asyncio.sleep(0.01)
        assert time.monotonic() - killed_at < 2, "not marked down"
    marked_down = time.monotonic() - killed_at
    await asyncio.sleep(0.5)
    served_before_return = served["b"]
    await backends("b", victim.port)  # the same address comes back
    while not web.server("b").up:  # type: ignore[union-attr]
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*load)
    assert failures == []  # every idempotent request was retried elsewhere
    # inter 0.1 s x fall 2, plus a check's own time
    assert marked_down < 0.1 * 2 + 0.5, marked_down
    assert served["b"] > served_before_return  # traffic again after rise checks
    assert served["a"] > 0 and served["c"] > 0


async def test_maxconn_queue_and_timeout_queue(start_lb: StartLb, backends) -> None:  # type: ignore[no-untyped-def]
    slow = await backends("slow")
    lb = await start_lb(**lb_fields(f"s={slow.address},maxconn=1", check=None, timeout_queue=0.3))
    async with (
        httpx.AsyncClient(base_url=url_of(lb), timeout=10) as one,
        httpx.AsyncClient(base_url=url_of(lb), timeout=10) as two,
    ):
        first = asyncio.create_task(one.get("/?delay=1.0"))
        server = lb.balancer.backends["web"].server("s")
        await until(lambda: server is not None and server.active == 1, what="the slot taken")
        started = time.monotonic()
        queued = await two.get("/")
        waited = time.monotonic() - started
        assert queued.status_code == 503 and 0.25 < waited < 0.8
        assert (await first).status_code == 200
    lb2 = await start_lb(**lb_fields(f"s={slow.address},maxconn=1", check=None, timeout_queue=3))
    async with (
        httpx.AsyncClient(base_url=url_of(lb2), timeout=10) as one,
        httpx.AsyncClient(base_url=url_of(lb2), timeout=10) as two,
    ):
        first = asyncio.create_task(one.get("/?delay=0.3"))
        server = lb2.balancer.backends["web"].server("s")
        await until(lambda: server is not None and server.active == 1, what="the slot taken")
        second = await two.get("/")  # waits for the slot, then is served
        assert second.status_code == 200 and (await first).status_code == 200
        assert lb2.balancer.backends["web"].queued_max == 1


async def test_all_down_is_503_at_once_and_backups_take_over(start_lb: StartLb, backends) -> None:  # type: ignore[no-untyped-def]
    main, spare = await backends("main"), await backends("spare")
    lb = await start_lb(**lb_fields(f"main={main.address}", f"spare={spare.address},backup"))
    web = lb.balancer.backends["web"]
    async with httpx.AsyncClient(base_url=url_of(lb)) as client:
        assert {(await client.get("/")).json()["server"] for _ in range(6)} == {"main"}
        main.kill()
        while web.server("main").up:  # type: ignore[union-attr]
            await asyncio.sleep(0.02)
        assert {(await client.get("/")).json()["server"] for _ in range(6)} == {"spare"}
        spare.kill()
        while web.server("spare").up:  # type: ignore[union-attr]
            await asyncio.sleep(0.02)
        started = time.monotonic()
        response = await client.get("/")
        assert response.status_code == 503 and time.monotonic() - started < 0.1
        assert response.headers["x-foobar-lb"] == "lb1"


POST = b"POST / HTTP/1.1\r\nHost: a\r\n"
SMUGGLING = {
    "CL.TE": POST + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    "TE.CL": POST
    + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    "TE.TE space before colon": POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "TE.TE two fields": POST
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n",
    "TE.TE xchunked": POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "TE.TE list": POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "TE.TE obs-fold": POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "duplicate Content-Length": POST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "bare LF": b"GET / HTTP/1.1\nHost: a\n\n",
}


async def test_smuggling_vectors_refused_and_never_reach_a_backend(
    start_lb: StartLb, servers: list[Server]
) -> None:
    reached: list[bytes] = []

    async def upstream(request: Request) -> Response:
        reached.append(request.target)
        await request.body.read()
        return Response(200, [], b"ok")

    backend = await start_server(upstream)
    servers.append(backend)
    lb = await start_lb(**lb_fields(f"a=127.0.0.1:{backend.address[1]}", check=None))
    for name, data in SMUGGLING.items():
        client = await RawClient.connect(address_of(lb))
        await client.send(data)
        status, _, _ = await client.response()
        assert status == 400, name
        assert await client.closed(), name
    assert reached == []


async def test_cookie_stickiness(start_lb: StartLb, backends) -> None:  # type: ignore[no-untyped-def]
    started = [await backends(name) for name in ("a", "b")]
    lb = await start_lb(**lb_fields(*(f"{b.name}={b.address}" for b in started), cookie="SRV"))
    async with httpx.AsyncClient(base_url=url_of(lb)) as client:
        first = await client.get("/")
        server = first.json()["server"]
        assert first.headers["set-cookie"].startswith(f"SRV={server}; Path=/")
        for _ in range(6):
            response = await client.get("/")
            assert response.json()["server"] == server
            assert "set-cookie" not in response.headers


async def test_stats_pages_and_admin_actions(start_lb: StartLb, backends) -> None:  # type: ignore[no-untyped-def]
    started = [await backends(name) for name in ("a", "b")]
    fields = lb_fields(*(f"{b.name}={b.address}" for b in started))
    token = "stats-admin-token-0123456789"
    lb = await start_lb(admin="127.0.0.1:0", admin_token=token, **fields)
    admin = f"http://127.0.0.1:{lb.admin.server.address[1]}"
    authorized = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with (
        httpx.AsyncClient(base_url=url_of(lb)) as client,
        httpx.AsyncClient(base_url=admin, headers=authorized) as ops,
    ):
        for _ in range(4):
            await client.get("/")
        page = await ops.get("/stats")
        assert page.status_code == 200 and "<td>a</td>" in page.text and "refresh" in page.text
        data = (await ops.get("/stats.json")).json()
        servers = {s["name"]: s for s in data["backends"][0]["servers"]}
        assert servers["a"]["requests"] + servers["b"]["requests"] == 4
        changed = await ops.post("/servers/web/a", content=json.dumps({"state": "maint"}))
        assert changed.json()["state"] == "maint"
        assert {(await client.get("/")).json()["server"] for _ in range(4)} == {"b"}
        await ops.post("/servers/web/a", content=json.dumps({"state": "ready", "weight": 3}))
        picks = collections.Counter([(await client.get("/")).json()["server"] for _ in range(8)])
        assert picks == {"a": 6, "b": 2}
        assert (await ops.post("/servers/web/zzz", content=b"{}")).status_code == 404
        assert (await ops.post("/servers/web/a", content=b'{"state": "off"}')).status_code == 400
        # a browser page's plain POST, or one without the token, changes nothing
        maint = json.dumps({"state": "maint"})
        as_form = {"Content-Type": "text/plain"}
        assert (await ops.post("/servers/web/a", content=maint, headers=as_form)).status_code == 415
        anonymous = await ops.post("/servers/web/a", content=maint, headers={"Authorization": ""})
        assert anonymous.status_code == 401
        assert (await ops.get("/stats.json")).json()["backends"][0]["servers"][0][
            "state"
        ] == "ready"
        metrics = (await ops.get("/metrics")).text
        assert 'foobar_lb_server_weight{backend="web",server="a"} 3.0' in metrics


async def test_a_reload_brings_the_new_admin_token(start_lb: StartLb, backends) -> None:  # type: ignore[no-untyped-def]
    backend = await backends("a")
    fields = {"admin": "127.0.0.1:0", **lb_fields(f"a={backend.address}", check=None)}
    old, new = "old-admin-token-0123456789", "new-admin-token-0123456789"
    lb = await start_lb(admin_token=old, **fields)
    reloaded = LbSettings.model_validate({"name": "lb1", "admin_token": new, **fields})
    assert await lb.reload(lambda: reloaded)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{lb.admin.server.address[1]}") as ops:
        for token, status in ((old, 401), (new, 200)):
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            answer = await ops.post("/servers/web/a", content=b'{"weight": 2}', headers=headers)
            assert answer.status_code == status, token


async def test_drain_takes_no_new_visitors_but_keeps_sticky_ones(
    start_lb: StartLb, backends
) -> None:  # type: ignore[no-untyped-def]
    started = [await backends(name) for name in ("a", "b")]
    lb = await start_lb(**lb_fields(*(f"{b.name}={b.address}" for b in started), cookie="SRV"))
    web = lb.balancer.backends["web"]
    async with (
        httpx.AsyncClient(base_url=url_of(lb)) as sticky,
        httpx.AsyncClient(base_url=url_of(lb)) as new,
    ):
        for _ in range(10):  # until the balancer pins this client to a
            if (await sticky.get("/")).json()["server"] == "a":
                break
            sticky.cookies.clear()
        server = web.server("a")
        assert server is not None
        server.state = "drain"
        assert {(await sticky.get("/")).json()["server"] for _ in range(4)} == {"a"}
        for _ in range(4):
            new.cookies.clear()
            assert (await new.get("/")).json()["server"] == "b"
