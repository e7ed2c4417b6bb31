"""The proxy to upstreams the tests start: forwarding, failover, timeouts, limits."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from foobar.http.server import Request, Response, Server
from foobar.web.serve import WebServer
from tests.conftest import RawClient, foobar_process, start_server, wait_listening
from tests.dbcluster import free_port
from tests.http.streaming_server import streaming_upstream, streams_with_flat_memory
from tests.web.conftest import StartWeb

ROOT = Path(__file__).resolve().parents[2]
SIZE = 100 * 1024 * 1024


def named_upstream(name: str, delay: float = 0.0):  # type: ignore[no-untyped-def]
    async def handler(request: Request) -> Response:
        await asyncio.sleep(delay)
        body = await request.body.read()
        answer = {
            "upstream": name,
            "method": request.method,
            "target": request.target.decode(),
            "headers": [[k.decode(), v.decode()] for k, v in request.headers],
            "body_length": len(body),
        }
        return Response(200, [(b"Content-Type", b"application/json")], json.dumps(answer).encode())

    return handler


def url(server: WebServer) -> str:
    host, port = server.server.address
    return f"http://{host}:{port}"


async def test_forwarding_headers_and_round_robin(
    start_web: StartWeb, servers: list[Server]
) -> None:
    upstreams = [await start_server(named_upstream(name)) for name in ("a", "b")]
    servers.extend(upstreams)
    web = await start_web(upstreams=[f"127.0.0.1:{u.address[1]}" for u in upstreams])
    async with httpx.AsyncClient(base_url=url(web)) as client:
        answers = []
        for _ in range(6):
            response = await client.get(
                "/api/posts?x=1",
                headers={
                    "X-Forwarded-For": "203.0.113.9",
                    "Connection": "keep-alive, X-Mine",
                    "X-Mine": "hop",
                    "Host": "www.foobar.com",
                },
            )
            assert response.status_code == 200
            assert response.headers["x-foobar-web"] == "web1"
            answers.append(response.json())
    assert [a["upstream"] for a in answers] == ["a", "b", "a", "b", "a", "b"]
    headers = {k.lower(): v for k, v in answers[0]["headers"]}
    assert answers[0]["target"] == "/api/posts?x=1"
    assert headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "www.foobar.com"
    assert headers["x-real-ip"] == "127.0.0.1"
    assert headers["host"] == "www.foobar.com"
    assert "x-mine" not in headers and "connection" not in headers
    # keep-alive towards the upstreams: one connection each carried three requests
    assert [u.pool.connections_made for u in web.proxy.upstreams] == [1, 1]


async def test_killed_upstream_others_take_over_then_502(
    start_web: StartWeb, servers: list[Server]
) -> None:
    upstreams = [await start_server(named_upstream(name)) for name in ("a", "b")]
    servers.append(upstreams[1])
    web = await start_web(upstreams=[f"127.0.0.1:{u.address[1]}" for u in upstreams])
    async with httpx.AsyncClient(base_url=url(web)) as client:
        assert (await client.get("/api/x")).status_code == 200
        await upstreams[0].shutdown(drain_timeout=0.1)  # killed mid-test
        for _ in range(10):
            response = await client.get("/api/x")
            assert response.status_code == 200 and response.json()["upstream"] == "b"
        created = await client.post("/api/x", content=b"once")
        assert created.json()["upstream"] == "b"
        assert (await client.get("/healthz")).status_code == 200
        await upstreams[1].shutdown(drain_timeout=0.1)
        response = await client.get("/api/x")
        assert response.status_code == 502 and response.headers["x-foobar-web"] == "web1"
        assert (await client.get("/healthz")).status_code == 503
    errors = web.registry.get_sample_value(
        "foobar_web_upstream_errors_total",
        {"upstream": web.proxy.upstreams[0].label, "kind": "connect"},
    )
    assert errors is not None and errors >= 1


async def test_502_goes_to_the_next_upstream_and_long_answers_stream(
    start_web: StartWeb, servers: list[Server]
) -> None:
    """On a warm keep-alive connection these go the fast path first: a 502 answered in a
    callback must still move to the next upstream, a long answer must still stream."""
    big = bytes(range(256)) * 4096

    async def failing(request: Request) -> Response:
        return Response(502, [], b"bad gateway upstream")

    async def good(request: Request) -> Response:
        return Response(200, [], big if request.path == b"/api/big" else b"good")

    upstreams = [await start_server(failing), await start_server(good)]
    servers.extend(upstreams)
    web = await start_web(upstreams=[f"127.0.0.1:{u.address[1]}" for u in upstreams], max_fails=100)
    async with httpx.AsyncClient(base_url=url(web)) as client:
        for _ in range(4):
            assert (await client.get("/api/x")).content == b"good"
            assert (await client.get("/api/big")).content == big
    failed = web.registry.get_sample_value(
        "foobar_web_upstream_errors_total",
        {"upstream": web.proxy.upstreams[0].label, "kind": "502"},
    )
    assert failed is not None and failed >= 4
    # a 502 read whole leaves its connection open for the next request, as nginx does
    assert [u.pool.connections_made for u in web.proxy.upstreams] == [1, 1]


async def test_silent_upstream_is_504(start_web: StartWeb, servers: list[Server]) -> None:
    slow = await start_server(named_upstream("slow", delay=5))
    servers.append(slow)
    web = await start_web(upstreams=[f"127.0.0.1:{slow.address[1]}"], proxy_read_timeout=0.3)
    async with httpx.AsyncClient(base_url=url(web)) as client:
        response = await client.get("/api/slow")
    assert response.status_code == 504


async def test_body_over_client_max_body_size_is_413(
    start_web: StartWeb, servers: list[Server]
) -> None:
    upstream = await start_server(named_upstream("a"))
    servers.append(upstream)
    web = await start_web(upstreams=[f"127.0.0.1:{upstream.address[1]}"], client_max_body_size=1000)
    client = await RawClient.connect(web.server.address)
    await client.send(b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n")
    status, _, _ = await client.response()
    assert status == 413
    async with httpx.AsyncClient(base_url=url(web)) as http:
        response = await http.post("/api/x", content=b"y" * 1000)
        assert response.json()["body_length"] == 1000


async def test_hop_by_hop_response_headers_dropped_and_framing_rebuilt(
    start_web: StartWeb,
) -> None:
    async def raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
            b"Transfer-Encoding: chunked\r\nX-Kept: yes\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    upstream = await asyncio.start_server(raw, "127.0.0.1", 0)
    async with upstream:
        port = upstream.sockets[0].getsockname()[1]
        web = await start_web(upstreams=[f"127.0.0.1:{port}"])
        client = await RawClient.connect(web.server.address)
        await client.send(b"GET /api/x HTTP/1.0\r\nHost: a\r\n\r\n")
        raw_response = await asyncio.wait_for(client.reader.read(), 5)
    head, _, body = raw_response.partition(b"\r\n\r\n")
    assert body == b"hello"  # HTTP/1.0 client: no chunked, the close ends the body
    assert b"X-Kept: yes" in head
    for dropped in (b"X-Hop", b"Keep-Alive", b"Transfer-Encoding"):
        assert dropped not in head


@pytest.mark.timeout(90)
async def test_100_mb_up_and_down_through_the_proxy_with_flat_memory(tmp_path: Path) -> None:
    port = free_port()
    async with (
        streaming_upstream() as (_, upstream_port),
        foobar_process(
            "foobar.web",
            "--bind",
            f"127.0.0.1:{port}",
            "--upstream",
            f"127.0.0.1:{upstream_port}",
            "--root",
            str(tmp_path),
            env={
                "FOOBAR_WEB_CLIENT_MAX_BODY_SIZE": str(1 << 30),
                "FOOBAR_WEB_PROXY_PREFIXES": '["/"]',
            },
        ) as web,
    ):
        await wait_listening(port)
        await streams_with_flat_memory(web.pid, port, SIZE)
