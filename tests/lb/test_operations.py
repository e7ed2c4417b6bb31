"""What an operator does: reload with SIGHUP, terminate TLS, redirect to HTTPS."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
import trustme

from foobar.lb.settings import FrontendSettings
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

        quiet = lb_toml(port, admin, [("b", b.address), ("c", c.address)])
        config.write_text(quiet.replace('name = "lb1"', 'name = "lb1"\naccess_log = false'))
        process.send_signal(signal.SIGHUP)
        await line_with(b"event=reloaded")
        assert {await served_by(held) for _ in range(4)} == {"b", "c"}  # not logged any more
    finally:
        process.terminate()
        seen += (await asyncio.wait_for(stderr.read(), 30)).splitlines()
        assert await asyncio.wait_for(process.wait(), 30) == 0
    # access lines are buffered: all 16 were written by the time the balancer stopped, and
    # none after the last reload turned the log off (on connections open before it too)
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


async def tls_frontend(  # type: ignore[no-untyped-def]
    start_lb: StartLb, backends, certificates: tuple[Path, Path, Path]
) -> int:
    backend = await backends("a")
    cert, key, _ = certificates
    port = free_port()
    await start_lb(
        frontends=[
            {
                "name": "https",
                "bind": f"127.0.0.1:{port}",
                "backend": "web",
                "tls_cert": str(cert),
                "tls_key": str(key),
            }
        ],
        backends=[{"name": "web", "servers": [f"a={backend.address}"], "check": None}],
    )
    return port


def client_context(
    version: ssl.TLSVersion, ciphers: str, minimum: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    """A client offering exactly `ciphers` at `version` (OpenSSL 3 refuses TLS 1.1 and
    SHA-1 itself at its default security level, hence level 0: the server must say no)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = minimum or version
    context.maximum_version = version
    context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    return context


async def handshake(port: int, context: ssl.SSLContext) -> tuple[str, str]:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        return ssl_object.version(), ssl_object.cipher()[0]
    finally:
        writer.close()


CBC_ONLY = (
    "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:"
    "ECDHE-RSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:AES128-SHA256:"
    "AES128-SHA:AES256-SHA"
)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_tls_follows_mozillas_intermediate_profile(
    start_lb: StartLb,
    backends,
    certificates: tuple[Path, Path, Path],  # type: ignore[no-untyped-def]
) -> None:
    port = await tls_frontend(start_lb, backends, certificates)
    tls10 = ssl.TLSVersion.TLSv1
    for refused in (
        client_context(ssl.TLSVersion.TLSv1_1, "ALL", minimum=tls10),  # TLS 1.1 and below
        client_context(ssl.TLSVersion.TLSv1_2, CBC_ONLY),  # TLS 1.2, CBC suites only
        client_context(ssl.TLSVersion.TLSv1_2, "DHE-RSA-AES128-GCM-SHA256:AES128-GCM-SHA256"),
    ):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(port, refused)
    for cipher in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"):
        offer = f"{cipher}:ECDHE-RSA-{cipher.removeprefix('ECDHE-ECDSA-')}"
        version, chosen = await handshake(port, client_context(ssl.TLSVersion.TLSv1_2, offer))
        assert version == "TLSv1.2" and chosen in offer.split(":")
    # the client's preference is taken: ChaCha20 first (a client without AES in hardware)
    both = (
        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
        "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
    )
    _, chosen = await handshake(port, client_context(ssl.TLSVersion.TLSv1_2, both))
    assert "CHACHA20" in chosen


def test_deploy_sends_hsts_for_a_year() -> None:
    # the frontends alone: the file's VRRP addresses are on no interface of this machine
    with (ROOT / "deploy" / "server1" / "lb.toml").open("rb") as file:
        raw = tomllib.load(file)["lb"]["frontends"]
    frontends = [FrontendSettings.model_validate(frontend) for frontend in raw]
    https = [frontend for frontend in frontends if frontend.tls_cert is not None]
    assert https and all(frontend.hsts_max_age == 31536000 for frontend in https)
