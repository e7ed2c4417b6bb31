"""The site as three (and four) hosts with their own addresses and firewalls, in network
namespaces, started from deploy/'s settings; a client that knows www.foobar.com only by
its hosts entry. Root only (CI runs as root)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.hosts import (
    DEPLOY,
    ROOT,
    SERVER3,
    Network,
    available,
    certificates,
    network_of,
    settings,
    start_web_and_db,
)

pytestmark = [
    pytest.mark.skipif(available() is not None, reason=str(available())),
    pytest.mark.timeout(240),
]

SERVER1, CLIENT = "10.0.0.1", "10.0.0.9"
WEB_HOSTS = {"server2": "10.0.0.2", "server2b": "10.0.0.4"}
WWW = "https://www.foobar.com"


@pytest.fixture
async def network() -> AsyncIterator[Network]:
    async with network_of(f"fb{os.getpid() % 100000}") as net:
        yield net


async def build_site(net: Network, tmp: Path, web_hosts: list[str]) -> str:
    """Hosts, firewalls and roles; returns the CA file the client trusts."""
    net.add_host("client", CLIENT)
    net.add_host("server1", SERVER1)
    for host in web_hosts:
        net.add_host(host, WEB_HOSTS[host])
    net.add_host("server3", SERVER3)
    net.hosts_file("client", {"www.foobar.com": SERVER1})
    net.firewall("server1", DEPLOY / "firewall" / "server1.nft")
    for host in web_hosts:
        net.firewall(host, DEPLOY / "firewall" / "server2.nft")
    net.firewall("server3", DEPLOY / "firewall" / "server3.nft")
    logs = tmp / "logs"
    logs.mkdir()

    await start_web_and_db(net, tmp, {host: WEB_HOSTS[host] for host in web_hosts})

    cert, key, ca = certificates(tmp, "www.foobar.com")
    replace = [
        ('"/etc/foobar/tls/www.foobar.com.pem"', f'"{cert}"'),
        ('"/etc/foobar/tls/www.foobar.com.key"', f'"{key}"'),
        # www's floating addresses (VRRP) on the test's one network; no peer: lb1 holds both
        ('"203.0.113.10"', '"10.0.0.10"'),
        ('"203.0.113.20"', '"10.0.0.20"'),
    ]
    lb = settings(DEPLOY / "server1" / "lb.toml", replace, tmp / "lb.toml")
    if "server2b" in web_hosts:
        with lb.open("a") as file:
            file.write('\n[[lb.backends.servers]]\nname = "web2"\naddress = "10.0.0.4:8080"\n')
    await net.start("server1", "foobar.lb", "--config", str(lb), log=logs / "lb.log")
    await net.until("client", f"{WWW}/", str(ca))
    return str(ca)


async def test_three_servers(network: Network, tmp_path: Path) -> None:
    net = network
    ca = await build_site(net, tmp_path, ["server2"])

    moved = await net.probe("client", "get", "http://www.foobar.com/api/posts?limit=1")
    assert moved["status"] == 301
    assert moved["headers"]["location"] == f"{WWW}/api/posts?limit=1"
    page = await net.probe("client", "get", f"{WWW}/", ca)
    assert page["status"] == 200 and '<form id="compose">' in page["body"]
    assert page["headers"]["strict-transport-security"] == "max-age=31536000"
    assert "frame-ancestors 'none'" in page["headers"]["content-security-policy"]
    assert page["headers"]["x-content-type-options"] == "nosniff"
    for asset in ("/app.js", "/style.css"):
        assert (await net.probe("client", "get", f"{WWW}{asset}", ca))["status"] == 200

    post = {"author": "ada", "title": "three servers", "body": "written on server 3's primary"}
    result = await net.probe("client", "post", f"{WWW}/api/posts", json.dumps(post), ca)
    assert result["created"]["status"] == 201
    assert result["read"]["status"] == 200
    assert json.loads(result["read"]["body"])["title"] == "three servers"
    listed = await net.probe("client", "get", f"{WWW}/api/posts", ca)
    assert listed["headers"]["x-foobar-db"] == "replica"
    assert listed["headers"]["x-foobar-lb"] == "lb1" and listed["headers"]["x-foobar-web"] == "web1"

    # the firewalls: the database only from the app server, the web tier only from the balancer
    for source in ("client", "server1"):
        assert await net.probe(source, "connect", SERVER3, "3306") == "timeout", source
    assert await net.probe("client", "connect", "10.0.0.2", "8080") == "timeout"
    assert await net.probe("client", "connect", "10.0.0.2", "8000") == "timeout"
    assert await net.probe("client", "connect", "10.0.0.2", "9101") == "timeout"
    assert await net.probe("server2", "connect", SERVER3, "3306") == "open"
    assert await net.probe("client", "connect", SERVER1, "9100") == "timeout"

    if shutil.which("chromium") is None:
        pytest.fail(
            "chromium is not installed (apt-get install chromium): the browser check needs it"
        )
    screenshot = tmp_path / "site.png"
    browser = await asyncio.create_subprocess_exec(
        "ip",
        "netns",
        "exec",
        net.ns("client"),
        sys.executable,
        "-m",
        "tests.e2e.browser",
        f"{WWW}/",
        str(screenshot),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(browser.communicate(), 120)
    assert browser.returncode == 0, err.decode()[-2000:]
    seen = json.loads(out)
    assert seen["title"].startswith("foobar")
    served = {row[0]: row for row in seen["served"]}
    row = next(row for label, row in served.items() if label.startswith("GET /api/posts/"))
    assert row[1:4] == ["lb1", "web1", "app1"] and row[4] in ("primary", "replica")
    assert row[5] == "200"
    assert seen["errors"] == []  # the Content-Security-Policy blocked nothing the page needs
    assert screenshot.stat().st_size > 10_000


async def test_two_web_servers_one_killed_under_load(network: Network, tmp_path: Path) -> None:
    net = network
    ca = await build_site(net, tmp_path, ["server2", "server2b"])
    spread = await net.probe("client", "loop", f"{WWW}/api/posts?limit=1", "2", ca)
    assert spread["failures"] == []
    assert set(spread["by_web"]) == {"web1", "web2"}

    loop = asyncio.create_task(net.probe("client", "loop", f"{WWW}/api/posts?limit=1", "6", ca))
    await asyncio.sleep(1.5)
    await net.stop_host("server2b")  # web and app of server 2b die at once
    during = await loop
    assert during["count"] > 20
    assert during["failures"] == [], during["failures"][:5]

    password = json.loads((tmp_path / "db" / "secrets.json").read_text())["app_password"]
    database = {
        "FOOBAR_APP_PRIMARY": f"mysql://foobar:{password}@{SERVER3}:3306/foobar",
        "FOOBAR_APP_REPLICAS": json.dumps([f"mysql://foobar:{password}@{SERVER3}:3307/foobar"]),
    }
    logs = tmp_path / "logs"
    await net.start(
        "server2b",
        "foobar.app",
        "--config",
        str(tmp_path / "app2.toml"),
        env=database,
        log=logs / "app2.log",
    )
    await net.start(
        "server2b", "foobar.web", "--config", str(tmp_path / "web2.toml"), log=logs / "web2.log"
    )
    await net.until("server2b", "http://10.0.0.4:8080/healthz")
    after = await net.probe("client", "loop", f"{WWW}/api/posts?limit=1", "8", ca)
    assert after["failures"] == []
    assert after["by_web"].get("web2", 0) > 0  # back in the rotation after `rise` checks
