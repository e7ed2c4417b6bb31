"""The balancer pair (VRRP) in network namespaces: a client, two balancers (server 1 and
server 1b) and a web server on one bridge, started from deploy/'s settings and firewalls
with the public addresses moved onto the test's network. Kills, graceful stops, frozen
processes, lost backends, forged adverts, and a keepalived peer. Root only (CI runs as
root). The takeover gaps are printed (run with -s to see them)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    pytest.mark.timeout(180),
]

ADMIN_TOKEN = "vrrp-test-admin-token-0123456789"  # admin changes need one (issue 16)
LB = {"server1": "10.0.0.1", "server1b": "10.0.0.5"}
NAMES = {"server1": "lb1", "server1b": "lb2"}
WEB, CLIENT = "10.0.0.2", "10.0.0.9"
# www's two floating addresses, moved from the public network onto the test's
VIP_A, VIP_B = "10.0.0.10", "10.0.0.20"
PUBLIC = [
    ("203.0.113.10", VIP_A),
    ("203.0.113.20", VIP_B),
    ("203.0.113.11", LB["server1"]),
    ("203.0.113.12", LB["server1b"]),
]
URL_A, URL_B = "https://www.foobar.com/", "https://www-b.foobar.com/"


@dataclass
class Pair:
    net: Network
    tmp: Path
    ca: str
    configs: dict[str, Path] = field(default_factory=dict)
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    async def start(self, host: str) -> None:
        self.processes[host] = await self.net.start(
            host,
            "foobar.lb",
            "--config",
            str(self.configs[host]),
            env={"FOOBAR_LB_ADMIN_TOKEN": ADMIN_TOKEN},
            log=self.tmp / "logs" / f"{host}.log",
        )

    async def status(self, host: str) -> dict[str, Any]:
        answer = await self.net.probe(host, "get", f"http://{LB[host]}:9100/status")
        assert answer["status"] == 200, answer
        data: dict[str, Any] = json.loads(answer["body"])
        return data

    async def vrrp(self, host: str, instance: str = "www-a") -> dict[str, Any]:
        rows = (await self.status(host))["vrrp"]
        return next(row for row in rows if row["instance"] == instance)

    async def until_state(
        self, host: str, state: str, instance: str = "www-a", seconds: float = 20
    ) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        row: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                row = await self.vrrp(host, instance)
            except AssertionError:
                row = {}
            if row.get("state") == state:
                return row
            await asyncio.sleep(0.2)
        raise AssertionError(f"{host} {instance} never became {state}: {row}")

    def holds(self, host: str, address: str) -> bool:
        shown = subprocess.run(
            ["ip", "-n", self.net.ns(host), "-4", "addr", "show", "dev", "eth0"],
            capture_output=True,
            text=True,
        ).stdout
        return f" {address}/" in shown

    async def metrics(self, host: str) -> str:
        answer = await self.net.probe(host, "get", f"http://{LB[host]}:9100/metrics")
        return str(answer["body"])

    async def freeze(self, host: str, seconds: float) -> None:
        """A balancer starved of CPU: SIGSTOP, then SIGCONT after `seconds`."""
        pid = self.processes[host].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    def forge(self, host: str, *args: str) -> list[str]:
        """Send forged adverts from `host` (tests/e2e/vrrp_forge.py)."""
        result = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.net.ns(host),
                sys.executable,
                "-m",
                "tests.e2e.vrrp_forge",
                *args,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr[-1000:]
        sent: list[str] = json.loads(result.stdout)
        return sent

    def timeline(self, url: str, seconds: float, timeout: float = 0.3) -> asyncio.Task[Any]:
        return asyncio.create_task(
            self.net.probe("client", "timeline", url, str(seconds), self.ca, str(timeout))
        )


def tune(text: str, instance: str, values: dict[str, str]) -> str:
    """`text` with these `key = value` lines set in one `[[lb.vrrp.instances]]` block."""
    start = text.index(f'name = "{instance}"\n')
    end = text.index("\n\n", start)
    block = text[start:end]
    for key, value in values.items():
        line = f"{key} = {value}"
        block, found = re.subn(rf"^{key} = .*$", line, block, flags=re.M)
        if not found:
            block += f"\n{line}"
    return text[:start] + block + text[end:]


def lb_settings(
    host: str, cert: Path, key: Path, *, active_active: bool, www_a: dict[str, str]
) -> str:
    text = (DEPLOY / ("server1" if host == "server1" else "server1b") / "lb.toml").read_text()
    for old, new in [*PUBLIC, ("/etc/foobar/tls/www.foobar.com.pem", str(cert))]:
        text = text.replace(old, new)
    text = text.replace("/etc/foobar/tls/www.foobar.com.key", str(key))
    if not active_active:  # keep www-a only
        text = re.sub(r'\[\[lb\.vrrp\.instances\]\]\nname = "www-b"\n(.+\n)+\n', "", text)
        assert 'name = "www-b"' not in text
    return tune(text, "www-a", www_a)


@pytest.fixture
async def network() -> AsyncIterator[Network]:
    async with network_of(f"vr{os.getpid() % 100000}") as net:
        yield net


async def build_pair(
    net: Network,
    tmp: Path,
    *,
    active_active: bool = False,
    www_a: dict[str, str] | None = None,
    www_a_per_host: dict[str, dict[str, str]] | None = None,
    balancers: tuple[str, ...] = ("server1", "server1b"),
    app_and_db: bool = False,
) -> Pair:
    """The pair in front of a web server (and with `app_and_db`, its app and server 3's
    database, as in deploy/)."""
    net.add_host("client", CLIENT)
    for host, address in LB.items():
        net.add_host(host, address)
    net.add_host("server2", WEB)
    if app_and_db:
        net.add_host("server3", SERVER3)
        net.firewall("server3", DEPLOY / "firewall" / "server3.nft")
    net.hosts_file("client", {"www.foobar.com": VIP_A, "www-b.foobar.com": VIP_B})
    pair_rule = [("203.0.113.11, 203.0.113.12", f"{LB['server1']}, {LB['server1b']}")]
    for host in LB:
        net.firewall(host, DEPLOY / "firewall" / "server1.nft", dict(pair_rule))
    net.firewall("server2", DEPLOY / "firewall" / "server2.nft")
    logs = tmp / "logs"
    logs.mkdir()
    if app_and_db:
        await start_web_and_db(net, tmp, {"server2": WEB})
    else:
        web = settings(DEPLOY / "server2" / "web.toml", [], tmp / "web.toml")
        await net.start("server2", "foobar.web", "--config", str(web), log=logs / "web.log")
        await net.until("server2", f"http://{WEB}:8080/healthz")

    cert, key, ca = certificates(tmp, "www.foobar.com", "www-b.foobar.com")
    pair = Pair(net, tmp, str(ca))
    for host in LB:
        config = tmp / f"{host}-lb.toml"
        config.write_text(
            lb_settings(
                host,
                cert,
                key,
                active_active=active_active,
                www_a={**(www_a or {}), **(www_a_per_host or {}).get(host, {})},
            )
        )
        pair.configs[host] = config
    # one after the other, so server 1 is master at the start whatever its preempt setting
    await pair.start(balancers[0])
    await pair.until_state(balancers[0], "master")
    for host in balancers[1:]:
        await pair.start(host)
    return pair


def gap_after(attempts: list[list[Any]], since: float, backup: str) -> float:
    """Seconds from `since` to the first answer through `backup`."""
    for at, outcome, balancer in attempts:
        if at >= since and outcome == "ok" and balancer == backup:
            return float(at - since)
    raise AssertionError(f"no answer through {backup} after the kill: {attempts[-5:]}")


def failures(attempts: list[list[Any]]) -> list[list[Any]]:
    return [attempt for attempt in attempts if attempt[1] != "ok"]


async def kill_master_and_measure(pair: Pair, seconds: float, settle: float) -> float:
    await pair.until_state("server1", "master")
    await pair.until_state("server1b", "backup")
    await pair.net.until("client", URL_A, pair.ca)
    loop = pair.timeline(URL_A, seconds)
    await asyncio.sleep(settle)
    killed_at = time.time()
    pair.processes["server1"].kill()
    attempts = await loop
    gap = gap_after(attempts, killed_at, "lb2")
    before = [a for a in attempts if a[0] < killed_at]
    assert before and all(a[2] == "lb1" for a in before if a[1] == "ok")
    assert pair.holds("server1b", VIP_A)
    return gap


async def test_active_passive_fast_adverts(network: Network, tmp_path: Path) -> None:
    """0.1 s adverts: kill -9 takeover under 1 s, a graceful stop fails nothing,
    preemption takes the address back once, forged adverts are dropped and counted, a
    frozen backup does not take over, a master without backends gives the address up."""
    pair = await build_pair(network, tmp_path)
    master = await pair.until_state("server1", "master")
    await pair.until_state("server1b", "backup")
    await asyncio.sleep(0.5)
    backup = await pair.vrrp("server1b")
    assert master["priority"] == 150 and backup["priority"] == 100
    assert backup["master"] == LB["server1"]
    assert pair.holds("server1", VIP_A) and not pair.holds("server1b", VIP_A)
    answer = await network.probe("client", "get", URL_A, pair.ca)
    assert answer["status"] == 200 and answer["headers"]["x-foobar-lb"] == "lb1"
    page = await network.probe("server1", "get", f"http://{LB['server1']}:9100/stats")
    assert "<h2>vrrp</h2>" in page["body"] and "master" in page["body"]
    metrics = await pair.metrics("server1")
    assert 'foobar_lb_vrrp_state{instance="www-a"} 2.0' in metrics
    assert 'foobar_lb_vrrp_priority{instance="www-a"} 150.0' in metrics
    assert 'foobar_lb_vrrp_master_transitions_total{instance="www-a"} 1.0' in metrics

    # forged adverts (source spoofed as server 1b, priority 254): dropped, counted, ignored
    sent = pair.forge("client", "eth0", LB["server1b"], "51", VIP_A)
    assert len(sent) == 8
    await asyncio.sleep(0.5)
    metrics = await pair.metrics("server1")
    for reason in sent:
        line = f'foobar_lb_vrrp_adverts_dropped_total{{instance="www-a",reason="{reason}"}} 1.0'
        assert line in metrics, reason
    row = await pair.vrrp("server1")
    assert row["state"] == "master" and row["master_transitions"] == 1
    assert pair.holds("server1", VIP_A)

    # a frozen backup (SIGSTOP shorter than its master-down interval, 0.36 s) stays backup
    for _ in range(5):
        await pair.freeze("server1b", 0.3)
        await asyncio.sleep(0.3)
    row = await pair.vrrp("server1b")
    assert row["state"] == "backup" and row["master_transitions"] == 0
    assert (await pair.vrrp("server1"))["master_transitions"] == 1

    # graceful stop of the master: no request fails (for a client with a timeout longer than
    # its SYN retransmission, 1 s, as any browser or HTTP library has)
    loop = pair.timeline(URL_A, 4.0, timeout=10.0)
    await asyncio.sleep(1.0)
    stopped_at = time.time()
    pair.processes["server1"].send_signal(signal.SIGTERM)
    attempts = await loop
    assert await pair.processes["server1"].wait() == 0
    graceful = gap_after(attempts, stopped_at, "lb2")
    print(
        f"\nVRRP graceful switch (0.1 s adverts): {len(attempts)} requests, "
        f"{len(failures(attempts))} failed, first answer via lb2 after {graceful * 1000:.0f} ms"
    )
    assert failures(attempts) == []
    assert (await pair.vrrp("server1b"))["state"] == "master"
    assert not pair.holds("server1", VIP_A)

    # preemption: server 1 comes back and takes the address back, once
    await pair.start("server1")
    await pair.until_state("server1", "master")
    await pair.until_state("server1b", "backup")
    await asyncio.sleep(2.0)
    assert (await pair.vrrp("server1"))["master_transitions"] == 1
    lb2_row = await pair.vrrp("server1b")
    assert lb2_row["state"] == "backup" and lb2_row["master_transitions"] == 1
    assert pair.holds("server1", VIP_A) and not pair.holds("server1b", VIP_A)

    # the master loses its backends (its only server put in maintenance): it steps down
    changed = await network.probe(
        "server1",
        "post-json",
        f"http://{LB['server1']}:9100/servers/web/web1",
        '{"state": "maint"}',
        ADMIN_TOKEN,
    )
    assert changed["status"] == 200
    row = await pair.until_state("server1", "init", seconds=5)
    assert row["fault"] == "no usable server in backend web" and row["priority"] == 0
    await pair.until_state("server1b", "master", seconds=5)
    answer = await network.probe("client", "get", URL_A, pair.ca)
    assert answer["status"] == 200 and answer["headers"]["x-foobar-lb"] == "lb2"
    await network.probe(
        "server1",
        "post-json",
        f"http://{LB['server1']}:9100/servers/web/web1",
        '{"state": "ready"}',
        ADMIN_TOKEN,
    )
    await pair.until_state("server1", "master", seconds=5)  # preempts again

    # kill -9 of the master
    gap = await kill_master_and_measure(pair, seconds=3.0, settle=1.0)
    print(f"VRRP takeover after kill -9 of the master (0.1 s adverts): {gap * 1000:.0f} ms")
    assert gap < 1.0


async def test_default_adverts_and_no_preempt(network: Network, tmp_path: Path) -> None:
    """1 s adverts: kill -9 takeover under 4 s; a backup frozen for 3 s (master-down is
    3.6 s) stays backup; with preempt off, server 1 coming back stays backup."""
    pair = await build_pair(network, tmp_path, www_a={"advert_interval": "1.0", "preempt": "false"})
    await pair.until_state("server1b", "backup")

    await pair.freeze("server1b", 3.0)
    await asyncio.sleep(1.0)
    row = await pair.vrrp("server1b")
    assert row["state"] == "backup" and row["master_transitions"] == 0

    gap = await kill_master_and_measure(pair, seconds=7.0, settle=1.0)
    print(f"\nVRRP takeover after kill -9 of the master (1 s adverts): {gap * 1000:.0f} ms")
    assert gap < 4.0

    await pair.start("server1")
    await pair.until_state("server1", "backup")
    await asyncio.sleep(5.0)  # longer than a master-down interval
    assert (await pair.vrrp("server1"))["state"] == "backup"
    assert (await pair.vrrp("server1b"))["state"] == "master"
    assert pair.holds("server1b", VIP_A) and not pair.holds("server1", VIP_A)


async def test_unicast_peers(network: Network, tmp_path: Path) -> None:
    """Adverts to the other balancer's address instead of multicast (clouds): the same
    election and takeover."""
    pair = await build_pair(
        network,
        tmp_path,
        www_a_per_host={
            "server1": {"unicast_peers": f'["{LB["server1b"]}"]'},
            "server1b": {"unicast_peers": f'["{LB["server1"]}"]'},
        },
    )
    await pair.until_state("server1b", "backup")
    await asyncio.sleep(0.5)
    row = await pair.vrrp("server1b")
    assert row["peers"] == [LB["server1"]] and row["master"] == LB["server1"]
    assert row["adverts_received"] > 0 and row["adverts_dropped"] == {}
    gap = await kill_master_and_measure(pair, seconds=3.0, settle=1.0)
    print(
        f"\nVRRP takeover after kill -9 of the master (unicast, 0.1 s adverts): {gap * 1000:.0f} ms"
    )
    assert gap < 1.0


async def test_active_active(network: Network, tmp_path: Path) -> None:
    """Two addresses, each balancer master of one; each failure moves its address over.
    The whole site behind them: a post written through one address is read through the
    other."""
    zone = (DEPLOY / "dns" / "foobar.com.zone").read_text()
    assert re.findall(r"^www\s+IN\s+A\s+(\S+)", zone, re.M) == ["203.0.113.10", "203.0.113.20"]

    pair = await build_pair(network, tmp_path, active_active=True, app_and_db=True)
    await pair.until_state("server1", "master", "www-a")
    await pair.until_state("server1b", "master", "www-b")
    await pair.until_state("server1", "backup", "www-b")
    await pair.until_state("server1b", "backup", "www-a")
    for url, balancer in ((URL_A, "lb1"), (URL_B, "lb2")):
        answer = await network.probe("client", "get", url, pair.ca)
        assert answer["status"] == 200 and answer["headers"]["x-foobar-lb"] == balancer
    post = {"author": "ada", "title": "two balancers", "body": "through www-a"}
    written = await network.probe("client", "post", f"{URL_A}api/posts", json.dumps(post), pair.ca)
    assert written["created"]["status"] == 201
    location = written["created"]["headers"]["location"]
    # (read from the replica, without the GTID cookie: it may take a moment to apply)
    read = await network.until("client", f"{URL_B}{location.lstrip('/')}", pair.ca, seconds=10)
    assert read["headers"]["x-foobar-lb"] == "lb2"
    assert json.loads(read["body"])["title"] == "two balancers"

    for dead, alive, url in (("server1", "server1b", URL_A), ("server1b", "server1", URL_B)):
        pair.processes[dead].kill()
        await pair.processes[dead].wait()
        await pair.until_state(alive, "master", "www-a", seconds=5)
        await pair.until_state(alive, "master", "www-b", seconds=5)
        for each in (URL_A, URL_B):
            answer = await network.probe("client", "get", each, pair.ca)
            assert answer["headers"]["x-foobar-lb"] == NAMES[alive], (dead, each)
        await pair.start(dead)  # back: preempts its own address again
        await pair.until_state(dead, "master", "www-a" if dead == "server1" else "www-b")
        answer = await network.probe("client", "get", url, pair.ca)
        assert answer["headers"]["x-foobar-lb"] == NAMES[dead]


KEEPALIVED = """global_defs {{
    vrrp_version 3
    router_id keepalived-{host}
}}
vrrp_instance www_a {{
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int 0.1
    virtual_ipaddress {{
        {vip}/24
    }}
}}
"""


@pytest.mark.skipif(shutil.which("keepalived") is None, reason="apt-get install keepalived")
async def test_keepalived_interoperates(network: Network, tmp_path: Path) -> None:
    """foobar on server 1, keepalived (vrrp_version 3) on server 1b: one master, and each
    takes over from the other."""
    pair = await build_pair(network, tmp_path, balancers=("server1",))
    await pair.until_state("server1", "master")

    conf = tmp_path / "keepalived.conf"
    conf.write_text(KEEPALIVED.format(host="server1b", priority=100, vip=VIP_A))
    log = (tmp_path / "logs" / "keepalived.log").open("ab")
    keepalived = await asyncio.create_subprocess_exec(
        "ip",
        "netns",
        "exec",
        network.ns("server1b"),
        "keepalived",
        "--dont-fork",
        "--log-console",
        "--log-detail",
        "--vrrp",
        "--use-file",
        str(conf),
        "--pid",
        str(tmp_path / "keepalived.pid"),
        "--vrrp_pid",
        str(tmp_path / "keepalived-vrrp.pid"),
        stdout=log,
        stderr=log,
    )
    network.processes.append(keepalived)
    try:
        await asyncio.sleep(2.0)  # keepalived's master-down interval is 0.36 s
        assert pair.holds("server1", VIP_A) and not pair.holds("server1b", VIP_A)
        row = await pair.vrrp("server1")
        assert row["state"] == "master" and row["adverts_dropped"] == {}

        # foobar stops gracefully (priority 0): keepalived takes over at once
        pair.processes["server1"].send_signal(signal.SIGTERM)
        await pair.processes["server1"].wait()
        deadline = time.monotonic() + 2.0
        while not pair.holds("server1b", VIP_A) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert pair.holds("server1b", VIP_A)

        # foobar comes back without preemption: it must follow keepalived's adverts
        config = pair.configs["server1"]
        config.write_text(tune(config.read_text(), "www-a", {"preempt": "false"}))
        await pair.start("server1")
        row = await pair.until_state("server1", "backup")
        await asyncio.sleep(1.0)
        row = await pair.vrrp("server1")
        assert row["state"] == "backup" and row["master"] == LB["server1b"]
        assert row["adverts_received"] > 5 and row["adverts_dropped"] == {}
        assert pair.holds("server1b", VIP_A) and not pair.holds("server1", VIP_A)

        # keepalived killed: foobar takes over
        keepalived.kill()
        await keepalived.wait()
        await pair.until_state("server1", "master", seconds=3)
        assert pair.holds("server1", VIP_A)
    finally:
        if keepalived.returncode is None:
            keepalived.send_signal(signal.SIGTERM)
            await keepalived.wait()
        log.close()
