"""What an operator does: reload with SIGHUP, terminate TLS, redirect to HTTPS."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import sys
from pathlib import Path

import httpx
import pytest
import trustme

from tests.conftest import RawClient
from tests.dbcluster import free_port
from tests.lb.conftest import ROOT, StartLb, url_of

pytestmark = pytest.mark.timeout(60)


def lb_toml(port: int, admin: int, servers: list[tuple[str, str]]) -> str:
    lines = [
        "[lb]",
        'name = "lb1"',
        f'admin = "127.0.0.1:{admin}"',
        "",
        "[[lb.frontends]]",
        'name = "www"',
        f'bind = "127.0.0.1:{port}"',
        'backend = "web"',
        "",
        "[[lb.backends]]",
        'name = "web"',
        'algorithm = "roundrobin"',
        'check = { kind = "http", path = "/healthz", inter = 0.2 }',
    ]
    for name, address in servers:
        lines += ["[[lb.backends.servers]]", f'name = "{name}"', f'address = "{address}"']
    return "\n".join(lines) + "\n"


async def served_by(client: RawClient) -> str:
    await client.send(b"GET / HTTP/1.1\r\nHost: www.foobar.com\r\n\r\n")
    status, _, body = await client.response()
    assert status == 200
    return str(json.loads(body)["server"])


async def test_sighup_reload_keeps_connections_and_refuses_a_broken_file(
    tmp_path: Path,
    backends,  # type: ignore[no-untyped-def]
) -> None:
    a, b, c = [await backends(name) for name in "abc"]
    port, admin = free_port(), free_port()
    config = tmp_path / "lb.toml"
    config.write_text(lb_toml(port, admin, [("a", a.address), ("b", b.address)]))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "foobar.lb",
        "--config",
        str(config),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    stderr = process.stderr
    seen: list[bytes] = []

    async def line_with(marker: bytes) -> bytes:
        while True:
            line = await asyncio.wait_for(stderr.readline(), 10)
            seen.append(line)
            if marker in line:
                return line

    try:
        await line_with(b"event=listening")
        held = await RawClient.connect(("127.0.0.1", port))  # a keep-alive client
        assert {await served_by(held) for _ in range(4)} == {"a", "b"}

        config.write_text(lb_toml(port, admin, [("b", b.address), ("c", c.address)]))
        process.send_signal(signal.SIGHUP)
        await line_with(b"event=reloaded")
        assert {await served_by(held) for _ in range(4)} == {"b", "c"}  # same connection
        fresh = await RawClient.connect(("127.0.0.1", port))
        assert {await served_by(fresh) for _ in range(4)} == {"b", "c"}

        config.write_text(lb_toml(port, admin, [("a", a.address)]) + "surprise = 1\n")
        process.send_signal(signal.SIGHUP)
        assert b"surprise" in await line_with(b"reload_refused")
        assert {await served_by(held) for _ in range(4)} == {"b", "c"}  # the old set runs on
    finally:
        process.terminate()
        seen += (await asyncio.wait_for(stderr.read(), 30)).splitlines()
        assert await asyncio.wait_for(process.wait(), 30) == 0
    # access lines are buffered: all 16 were written by the time the balancer stopped
    assert sum(b'"GET / HTTP/1.1" 200' in line for line in seen) == 16


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    issued = authority.issue_cert("www.foobar.com", "127.0.0.1")
    cert, key, ca = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    issued.private_key_and_cert_chain_pem.write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    return cert, key, ca


async def test_https_and_the_redirecting_http_listener(
    start_lb: StartLb,
    backends,
    certificates: tuple[Path, Path, Path],  # type: ignore[no-untyped-def]
) -> None:
    backend = await backends("a")
    cert, key, ca = certificates
    https_port = free_port()
    lb = await start_lb(
        frontends=[
            {
                "name": "https",
                "bind": f"127.0.0.1:{https_port}",
                "backend": "web",
                "tls_cert": str(cert),
                "tls_key": str(key),
                "hsts_max_age": 31536000,
            },
            {
                "name": "http",
                "bind": "127.0.0.1:0",
                "backend": "web",
                "redirect_https_port": https_port,
            },
        ],
        backends=[{"name": "web", "servers": [f"a={backend.address}"], "check": None}],
    )
    context = ssl.create_default_context(cafile=str(ca))
    async with httpx.AsyncClient(verify=context) as client:
        response = await client.get(f"https://127.0.0.1:{https_port}/page?x=1")
        assert response.status_code == 200 and response.json()["server"] == "a"
        assert response.headers["strict-transport-security"] == "max-age=31536000"
        assert response.http_version == "HTTP/1.1"
        plain = url_of(lb, "http")
        moved = await client.get(f"{plain}/page?x=1", headers={"Host": "www.foobar.com"})
        assert moved.status_code == 301
        assert moved.headers["location"] == f"https://www.foobar.com:{https_port}/page?x=1"
        posted = await client.post(f"{plain}/api/posts", headers={"Host": "www.foobar.com:80"})
        assert posted.status_code == 308
        assert posted.headers["location"] == f"https://www.foobar.com:{https_port}/api/posts"
    _, writer = await asyncio.open_connection(
        "127.0.0.1", https_port, ssl=context, server_hostname="www.foobar.com"
    )
    assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
    writer.close()
