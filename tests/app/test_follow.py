"""The app finds the primary itself and follows a planned switchover without a restart;
read-your-writes (the GTID cookie) holds across it, between two app servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from foobar.app.serve import AppServer
from foobar.app.settings import AppSettings
from tests.dbcluster import Cluster
from tests.history import Checker

pytestmark = pytest.mark.timeout(120)

POST = {"author": "ada", "title": "before", "body": "x"}


@pytest.fixture
async def followers(db_cluster: Cluster) -> AsyncIterator[list[AppServer]]:
    servers = [
        AppServer(
            AppSettings.model_validate(
                {
                    "bind": "127.0.0.1:0",
                    "name": f"app{n}",
                    # every server, no roles given: the app finds out which is which
                    "databases": [db_cluster.dsn("primary"), db_cluster.dsn("replica")],
                    "health_interval": 0.2,
                    "access_log": False,
                }
            )
        )
        for n in (1, 2)
    ]
    await asyncio.gather(*(server.start() for server in servers))
    yield servers
    for server in servers:
        await server.stop()


async def test_apps_follow_a_switchover_and_read_your_writes_holds(
    db_cluster: Cluster, followers: list[AppServer]
) -> None:
    app1, app2 = (f"http://{host}:{port}" for host, port in (s.server.address for s in followers))
    assert all(server.router.primary.name == "db1" for server in followers)  # type: ignore[union-attr]
    async with httpx.AsyncClient(timeout=10) as client:
        status = (await client.get(f"{app1}/healthz")).json()
        assert status["nodes"] == {"db1": True, "db2": True}
        first = await client.post(f"{app1}/api/posts", json=POST)
        assert (first.status_code, first.headers["x-foobar-db"]) == (201, "primary")
        # the cookie the client now holds makes app2's read wait for that write
        read = await client.get(f"{app2}/api/posts/{first.json()['id']}")
        assert read.status_code == 200

        await db_cluster.supervisor.promote()  # planned switchover: db2 becomes primary

        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:  # bounded: the apps notice within a couple of health intervals
            written = await client.post(f"{app1}/api/posts", json={**POST, "title": "after"})
            if written.status_code == 201:
                break
            assert written.status_code == 503 and written.headers["retry-after"] == "1"
            assert loop.time() - began < 5, "app1 never found the new primary"
            await asyncio.sleep(0.1)
        print(f"writes resumed {loop.time() - began:.2f}s after the switchover")
        assert written.headers["x-foobar-db"] == "primary"
        assert followers[0].router.primary is not None
        assert followers[0].router.primary.name == "db2"
        assert followers[0].router.primary.epoch == 2
        new_id = written.json()["id"]
        read = await client.get(f"{app2}/api/posts/{new_id}")  # cookie: the new GTID
        assert (read.status_code, read.json()["title"]) == (200, "after")
        assert (await client.get(f"{app2}/api/posts/{first.json()['id']}")).status_code == 200
        for app in (app1, app2):
            async with httpx.AsyncClient() as admin_less:
                health = (await admin_less.get(f"{app}/healthz")).json()
            assert health["nodes"] == {"db1": True, "db2": True}, health


async def test_promote_under_load_loses_nothing(
    db_cluster: Cluster, followers: list[AppServer]
) -> None:
    """The history checker through both app servers while the primary is switched."""
    urls = [f"http://{host}:{port}" for host, port in (s.server.address for s in followers)]
    spec = {
        name: {
            "host": db_cluster.spec(name).host,
            "port": db_cluster.spec(name).port,
            "user": db_cluster.settings.app_user,
            "password": db_cluster.supervisor.app_password,
            "db": db_cluster.settings.app_schema,
        }
        for name in ("primary", "replica")
    }
    checker = Checker(urls, spec)
    checker.start()
    await asyncio.sleep(1.0)
    checker.fault()
    await db_cluster.supervisor.promote()
    await asyncio.sleep(1.5)
    await checker.stop()
    verdict = await checker.verdict(must_hold=["primary", "replica"])
    assert verdict["problems"] == [] and verdict["lost"] == 0, verdict
    assert verdict["ok"] > 20
    resumed = verdict["writes_resumed_after"]
    assert resumed is not None and resumed < 5, verdict
    print(f"promote under load: writes resumed {resumed}s after the switchover began")
