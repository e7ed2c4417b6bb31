"""Automatic failover with agents and a witness, each its own process, on real MariaDB
servers, checked through the app over HTTP by the history checker (tests/history.py).

failover_after is 1 s here (3 s by default) so that each scenario takes seconds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from foobar.app.serve import AppServer
from foobar.app.settings import AppSettings
from foobar.db import cli
from foobar.db.replication import Node
from foobar.db.settings import InstanceSettings
from foobar.settings import parse_host_port
from tests.dbcluster import ADMIN_TOKEN, APP_PASSWORD, AgentCluster, running_agents
from tests.history import Checker

# what a change on an agent's admin listener carries (issue 16)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}

pytestmark = pytest.mark.timeout(180)

# The target of the issue: writes through the app resume within 10 s of the primary's
# host vanishing (with the default failover_after of 3 s; 1 s here).
RESUME_WITHIN = 10.0


@contextlib.asynccontextmanager
async def app_on(cluster: AgentCluster, name: str = "app1") -> AsyncIterator[str]:
    settings = AppSettings.model_validate(
        {
            "bind": "127.0.0.1:0",
            "name": name,
            "databases": [cluster.dsn("primary"), cluster.dsn("replica")],
            "health_interval": 0.2,
            "query_timeout": 1.0,
            "access_log": False,
        }
    )
    server = AppServer(settings)
    await server.start()
    host, port = server.server.address
    try:
        yield f"http://{host}:{port}"
    finally:
        await server.stop()


def servers(cluster: AgentCluster) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "host": "127.0.0.1",
            "port": port,
            "user": "foobar",
            "password": APP_PASSWORD,
            "db": "foobar",
        }
        for name, port in cluster.ports.items()
    }


async def checking(cluster: AgentCluster, url: str) -> Checker:
    """The history checker, posting through the app for a second before any fault."""
    checker = Checker([url], servers(cluster))
    checker.start()
    await asyncio.sleep(1.0)
    return checker


def is_primary(name: str) -> Any:
    return lambda s: s["primary"] == name and s["instances"][0]["read_only"] is False


def settled(s: dict[str, Any]) -> bool:
    return bool(s["healthy"]) and not s["epoch"]["degraded"]


async def kill_host(cluster: AgentCluster, name: str, checker: Checker | None = None) -> None:
    """kill -9 of the agent and its mariadbd: the host is gone (the fault marked in the
    checker's history at that moment)."""
    pid = await cluster.server_pid(name)
    if checker is not None:
        checker.fault()
    cluster.kill(name)
    os.kill(pid, signal.SIGKILL)
    await cluster.processes[name].wait()


def assert_clean(verdict: dict[str, Any], label: str) -> None:
    assert verdict["problems"] == [], verdict
    assert verdict["lost"] == 0
    assert verdict["ok"] > 20, verdict
    resumed = verdict["writes_resumed_after"]
    assert resumed is not None and resumed < RESUME_WITHIN, verdict
    print(f"{label}: writes resumed {resumed}s after the fault")


async def test_kill_primary_fails_over_and_the_old_primary_rejoins(tmp_path: Path) -> None:
    async with running_agents(tmp_path) as cluster, app_on(cluster) as url:
        checker = await checking(cluster, url)
        await kill_host(cluster, "primary", checker)
        status = await cluster.until("replica", is_primary("replica"), timeout=20)
        assert status["epoch"]["epoch"] == 2
        assert status["epoch"]["degraded"]  # alone: asynchronous, said loudly
        assert status["last_failover"]["reason"].startswith("failover: primary silent")
        witness = await cluster.status("witness")
        assert (witness["state"]["epoch"], witness["state"]["primary"]) == (2, "replica")
        await asyncio.sleep(1.0)
        await cluster.start("primary")  # the old primary comes back: it rejoins, clean
        await cluster.until("replica", settled, timeout=60)
        old = await cluster.until("primary", lambda s: s["healthy"], timeout=30)
        assert old["instances"][0]["read_only"] is True
        assert old["errant"] == []
        await asyncio.sleep(0.5)
        await checker.stop()
        verdict = await checker.verdict(must_hold=["primary", "replica"])
        assert_clean(verdict, "kill -9 primary")
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://{cluster.admin('replica')}/metrics")).text
        assert "foobar_db_epoch 2.0" in metrics
        assert "foobar_db_failovers_total 1.0" in metrics
        assert "foobar_db_semisync_degraded 0.0" in metrics


async def test_frozen_primary_is_replaced_then_fenced(tmp_path: Path) -> None:
    async with running_agents(tmp_path) as cluster, app_on(cluster) as url:
        checker = await checking(cluster, url)
        pid = await cluster.server_pid("primary")
        checker.fault()
        os.kill(pid, signal.SIGSTOP)
        cluster.kill("primary", signal.SIGSTOP)
        try:
            await cluster.until("replica", is_primary("replica"), timeout=20)
            await asyncio.sleep(1.0)
        finally:
            os.kill(pid, signal.SIGCONT)
            cluster.kill("primary", signal.SIGCONT)
        # resumed, the old primary learns the newer epoch and is fenced
        old = await cluster.until(
            "primary",
            lambda s: s["epoch"]["epoch"] == 2 and s["instances"][0]["read_only"] is True,
            timeout=20,
        )
        # it rejoins, or (a write was waiting for an acknowledgement when it froze) it
        # stays out naming the transactions the new primary lacks
        await asyncio.sleep(1.0)
        old = await cluster.status("primary")
        assert old["errant"] or old["instances"][0]["replicating_from"], old
        await checker.stop()
        verdict = await checker.verdict(must_hold=["replica"])
        assert_clean(verdict, "SIGSTOP primary")
        assert checker.history.samples, "the sampler saw the servers"


async def test_dead_replica_degrades_explicitly_and_writes_go_on(tmp_path: Path) -> None:
    async with running_agents(tmp_path) as cluster, app_on(cluster) as url:
        checker = await checking(cluster, url)
        await kill_host(cluster, "replica", checker)
        status = await cluster.until("primary", lambda s: s["epoch"]["degraded"], timeout=20)
        assert status["epoch"]["epoch"] == 1  # no failover, the same primary
        assert "replica replica silent" in status["epoch"]["reason"]
        assert "DEGRADED" in status["reason"]
        witness = await cluster.status("witness")
        assert witness["state"]["degraded"] is True  # recorded by the majority first
        host_port = parse_host_port(cluster.admin("primary"))
        assert await cli.status(host_port) == 1  # type: ignore[arg-type]
        ok_before = checker.history.count("ok")
        await asyncio.sleep(1.0)
        assert checker.history.count("ok") > ok_before + 10  # writes go on, asynchronously
        await cluster.start("replica")
        await cluster.until("primary", settled, timeout=60)
        await asyncio.sleep(0.5)
        await checker.stop()
        verdict = await checker.verdict(must_hold=["primary", "replica"])
        assert_clean(verdict, "replica killed")


async def test_old_primary_with_an_errant_transaction_is_kept_out(tmp_path: Path) -> None:
    async with running_agents(tmp_path) as cluster:
        pid = await cluster.server_pid("primary")
        cluster.kill("primary")  # the agent dies; its server is frozen, then comes back
        await cluster.processes["primary"].wait()
        os.kill(pid, signal.SIGSTOP)
        try:
            await cluster.until("replica", is_primary("replica"), timeout=20)
        finally:
            os.kill(pid, signal.SIGCONT)
        # by hand, on the old primary nobody fenced yet: a write only it will ever have
        spec = InstanceSettings(name="primary", port=cluster.ports["primary"], server_id=1)
        old = Node(spec, "root", socket=tmp_path / "primary" / "primary" / "mysqld.sock")
        await old.execute(
            "SET GLOBAL rpl_semi_sync_master_enabled=OFF",
            "CREATE DATABASE made_by_hand",
        )
        gtid = await old.value("SELECT @@gtid_binlog_pos")
        old.close()
        await cluster.start("primary")
        status = await cluster.until("primary", lambda s: bool(s["errant"]), timeout=30)
        assert status["errant"] == [gtid]
        assert status["instances"][0]["read_only"] is True
        assert f"errant transactions {gtid}" in status["reason"]
        assert not status["healthy"]
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://{cluster.admin('primary')}/metrics")).text
        assert "foobar_db_errant_transactions 1.0" in metrics
        await asyncio.sleep(1.0)
        status = await cluster.status("primary")
        assert status["instances"][0]["replicating_from"] is None  # still out, nothing merged


async def test_ten_failovers_in_a_row(tmp_path: Path) -> None:
    async with running_agents(tmp_path) as cluster, app_on(cluster) as url:
        checker = Checker([url], servers(cluster))
        checker.start()
        times: list[float] = []
        primary, replica = "primary", "replica"
        for round_ in range(10):
            await asyncio.sleep(0.5)
            loop = asyncio.get_running_loop()
            began = loop.time()
            await kill_host(cluster, primary, checker)  # the last round's is measured
            status = await cluster.until(replica, is_primary(replica), timeout=20)
            assert status["epoch"]["epoch"] == round_ + 2
            times.append(round(loop.time() - began, 2))
            await cluster.start(primary)
            await cluster.until(replica, settled, timeout=60)
            primary, replica = replica, primary
        await asyncio.sleep(0.5)
        await checker.stop()
        print(f"ten failovers: promoted after {times} s")
        verdict = await checker.verdict(must_hold=["primary", "replica"])
        assert verdict["problems"] == [] and verdict["lost"] == 0, verdict
        assert max(times) < RESUME_WITHIN


async def test_no_failover_without_the_witness(tmp_path: Path) -> None:
    """Two agents alone are no majority: with the witness gone, a lost primary is not
    replaced (and says so), however long it stays away."""
    async with running_agents(tmp_path) as cluster:
        await cluster.stop("witness")
        await kill_host(cluster, "primary")
        await asyncio.sleep(cluster.failover_after * 4)
        status = await cluster.status("replica")
        assert (status["epoch"]["epoch"], status["primary"]) == (1, "primary")
        assert status["instances"][0]["read_only"] is True
        log = (cluster.logs / "replica.log").read_text()
        assert "the witness does not agree that the primary is gone" in log


async def test_planned_switchover_between_agents_under_load(tmp_path: Path) -> None:
    async with running_agents(tmp_path) as cluster, app_on(cluster) as url:
        checker = await checking(cluster, url)
        async with httpx.AsyncClient(timeout=60) as client:
            refused = await client.post(
                f"http://{cluster.admin('replica')}/promote", content=b"{}", headers=ADMIN
            )
            assert refused.status_code == 409 and "ask primary's agent" in refused.text
            checker.fault()
            answer = await client.post(
                f"http://{cluster.admin('primary')}/promote", content=b"{}", headers=ADMIN
            )
        assert answer.status_code == 200, answer.text
        assert answer.json()["primary"] == "replica"
        status = await cluster.until("replica", settled, timeout=30)  # the old one rejoined
        assert status["epoch"]["epoch"] == 2
        assert status["last_failover"]["reason"] == "switchover from primary"
        old = await cluster.until("primary", lambda s: s["healthy"], timeout=30)
        assert old["instances"][0]["read_only"] is True and old["errant"] == []
        await asyncio.sleep(0.5)
        await checker.stop()
        verdict = await checker.verdict(must_hold=["primary", "replica"])
        assert_clean(verdict, "planned switchover between agents")


async def test_two_apps_follow_a_failover_and_read_your_writes_holds(tmp_path: Path) -> None:
    """Two app servers, no restart: after kill -9 of the primary's host both write to the
    new primary, and a client's cookie makes the other app's read wait for its write."""
    post = {"author": "ada", "title": "before", "body": "x"}
    async with (
        running_agents(tmp_path) as cluster,
        app_on(cluster, "app1") as app1,
        app_on(cluster, "app2") as app2,
        httpx.AsyncClient(timeout=10) as client,
    ):
        first = await client.post(f"{app1}/api/posts", json=post)
        assert first.status_code == 201
        assert (await client.get(f"{app2}/api/posts/{first.json()['id']}")).status_code == 200

        await kill_host(cluster, "primary")
        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:  # bounded: failover_after plus the apps' health checks
            written = await client.post(f"{app1}/api/posts", json={**post, "title": "after"})
            if written.status_code == 201:
                break
            assert written.status_code == 503 and "retry-after" in written.headers
            assert loop.time() - began < 20, "app1 never found the new primary"
            await asyncio.sleep(0.2)
        print(f"two apps: writes resumed {loop.time() - began:.2f}s after kill -9")
        # with the cookie the new primary set: app2 reads the write (no replica lags now)
        read = await client.get(f"{app2}/api/posts/{written.json()['id']}")
        assert (read.status_code, read.json()["title"]) == (200, "after")
        written2 = await client.post(f"{app2}/api/posts", json={**post, "title": "app2"})
        assert written2.status_code == 201  # the other app follows too
        assert (await client.get(f"{app1}/api/posts/{first.json()['id']}")).status_code == 200
