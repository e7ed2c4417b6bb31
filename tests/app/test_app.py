"""The board against a real primary-replica pair: routing, read-your-writes, failures."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from foobar.app.serve import AppServer
from foobar.db.instance import START_TIMEOUT
from tests.app.conftest import RunningApp, app_settings
from tests.conftest import until
from tests.dbcluster import Cluster, cluster_settings, running_cluster

pytestmark = pytest.mark.timeout(120)

POST = {"author": "ada", "title": "hello", "body": "first post"}


async def com_select(cluster: Cluster, name: str) -> int:
    rows = await cluster.admin(name).query("SHOW GLOBAL STATUS LIKE 'Com_select'")
    return int(rows[0]["Value"])


async def test_post_on_one_app_is_read_at_once_on_the_other(
    db_cluster: Cluster, apps: list[RunningApp]
) -> None:
    first, second = apps
    replica = db_cluster.admin(db_cluster.replica.name)
    await replica.execute("STOP SLAVE SQL_THREAD")
    async with first.client() as writer, second.client() as reader:
        for n in range(10):
            created = await writer.post("/api/posts", json={**POST, "title": f"stopped {n}"})
            assert created.status_code == 201
            assert created.headers["x-foobar-app"] == "app1"
            gtid = created.headers["x-foobar-gtid"]
            assert created.cookies["foobar_gtid"] == gtid
            post_id = created.json()["id"]
            read = await reader.get(
                f"/api/posts/{post_id}", headers={"Cookie": f"foobar_gtid={gtid}"}
            )
            assert read.status_code == 200, read.text
            assert read.json()["title"] == f"stopped {n}"
            assert (read.headers["x-foobar-app"], read.headers["x-foobar-db"]) == (
                "app2",
                "primary",
            )

        await replica.execute("START SLAVE SQL_THREAD")
        await until(lambda: second.server.router.replicas[0].usable, what="replica usable")
        for n in range(10):
            created = await writer.post("/api/posts", json={**POST, "title": f"running {n}"})
            gtid = created.headers["x-foobar-gtid"]
            read = await reader.get(
                f"/api/posts/{created.json()['id']}", headers={"Cookie": f"foobar_gtid={gtid}"}
            )
            assert read.status_code == 200 and read.json()["title"] == f"running {n}"
            assert read.headers["x-foobar-db"] == "replica"


async def test_reads_without_a_token_are_served_by_the_replica(
    db_cluster: Cluster, apps: list[RunningApp]
) -> None:
    before = await com_select(db_cluster, db_cluster.replica.name)
    async with apps[0].client() as client:
        for _ in range(20):
            response = await client.get("/api/posts")
            assert response.status_code == 200
            assert response.headers["x-foobar-db"] == "replica"
    assert await com_select(db_cluster, db_cluster.replica.name) >= before + 20
    metrics = apps[0].server.registry.get_sample_value(
        "foobar_app_db_queries_total", {"node": "replica", "outcome": "ok"}
    )
    assert metrics is not None and metrics >= 20


async def test_killed_replica_sends_reads_to_primary_and_back(
    db_cluster: Cluster, apps: list[RunningApp]
) -> None:
    instance = db_cluster.supervisor.instances[db_cluster.replica.name]
    assert instance.pid is not None
    os.kill(instance.pid, signal.SIGKILL)
    await asyncio.sleep(0.3)  # one health interval (0.2 s) and the time a check takes
    async with apps[0].client() as client:
        response = await client.get("/api/posts")
        assert (response.status_code, response.headers["x-foobar-db"]) == (200, "primary")
        # the supervisor restarts the replica, within its own start bound (START_TIMEOUT);
        # the app notices within an interval
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while asyncio.get_running_loop().time() < deadline:
            response = await client.get("/api/posts")
            if response.headers["x-foobar-db"] == "replica":
                break
            await asyncio.sleep(0.1)
        assert response.headers["x-foobar-db"] == "replica", (
            f"the replica is not back (process {instance.process and instance.process.returncode}"
            f", pid {instance.pid}): {instance.last_errors(10)}"
        )
    fallbacks = apps[0].server.registry.get_sample_value(
        "foobar_app_db_fallbacks_total", {"reason": "replica_unusable"}
    )
    assert fallbacks is not None and fallbacks >= 1


async def test_a_read_the_replica_cannot_run_goes_to_the_primary(
    db_cluster: Cluster, apps: list[RunningApp]
) -> None:
    """A replica restarted after a kill may not have replayed the schema yet: its error
    (no such table) sends the read to the primary, not a 500 to the client."""
    async with apps[0].client() as client:
        assert (await client.post("/api/posts", json=POST)).status_code == 201
        await db_cluster.wait_until(db_cluster.replica.name, "SELECT COUNT(*) FROM posts", 1)
        # the app's router must count the replica usable again (an earlier test may have
        # restarted it): else the read below falls back as "replica_unusable"
        for _ in range(100):
            if (await client.get("/api/posts")).headers["x-foobar-db"] == "replica":
                break
            await asyncio.sleep(0.1)
        replica = db_cluster.admin(db_cluster.replica.name)
        schema = db_cluster.settings.app_schema
        await replica.execute(f"RENAME TABLE {schema}.posts TO {schema}.hidden")
        try:
            read = await client.get("/api/posts")
            assert (read.status_code, read.headers["x-foobar-db"]) == (200, "primary")
            assert len(read.json()["posts"]) == 1
        finally:
            await replica.execute(f"RENAME TABLE {schema}.hidden TO {schema}.posts")
    fallbacks = apps[0].server.registry.get_sample_value(
        "foobar_app_db_fallbacks_total", {"reason": "replica_error"}
    )
    assert fallbacks == 1


async def test_killed_primary_fails_writes_fast_and_reads_go_on(tmp_path: Path) -> None:
    # the supervisor would restart the primary within a second: let it watch slowly
    async with running_cluster(cluster_settings(tmp_path / "db", check_interval=60)) as cluster:
        server = AppServer(app_settings(cluster, "app1", query_timeout=1.0))
        await server.start()
        app = RunningApp(server)
        try:
            async with app.client() as client:
                assert (await client.post("/api/posts", json=POST)).status_code == 201
                primary = cluster.supervisor.instances[cluster.primary.name]
                assert primary.pid is not None
                os.kill(primary.pid, signal.SIGKILL)
                loop = asyncio.get_running_loop()
                for _ in range(3):
                    started = loop.time()
                    response = await client.post("/api/posts", json=POST)
                    assert response.status_code == 503, response.text
                    assert response.headers["retry-after"] == "1"
                    assert loop.time() - started < 1.5  # within its timeout
                await until(
                    lambda: server.router.primary is None or not server.router.primary.usable,
                    what="primary unusable",
                )
                read = await client.get("/api/posts")
                assert (read.status_code, read.headers["x-foobar-db"]) == (200, "replica")
                assert read.json()["posts"][0]["title"] == "hello"
                health = await client.get("/healthz")
                assert health.status_code == 200
                assert health.json()["nodes"] == {"primary": False, "replica": True}
                replica = cluster.supervisor.instances[cluster.replica.name]
                assert replica.pid is not None
                os.kill(replica.pid, signal.SIGKILL)  # now neither node is usable
                node = next(node for node in server.router.nodes if node.name == "replica")
                await until(lambda: not node.usable, what="replica down")
                health = await client.get("/healthz")
                assert health.status_code == 503
                assert health.json()["nodes"] == {"primary": False, "replica": False}
                read = await client.get("/api/posts")
                assert read.status_code == 503 and read.headers["retry-after"] == "1"
        finally:
            await server.stop()


async def test_same_idempotency_key_twice_concurrently_makes_one_row(
    db_cluster: Cluster, apps: list[RunningApp]
) -> None:
    key = {"Idempotency-Key": "retry-7f3a"}
    async with apps[0].client() as one, apps[1].client() as two:
        responses = await asyncio.gather(
            one.post("/api/posts", json=POST, headers=key),
            two.post("/api/posts", json=POST, headers=key),
        )
        assert [r.status_code for r in responses] == [201, 201]
        assert responses[0].json() == responses[1].json()
        assert sorted(r.headers.get("idempotent-replayed", "") for r in responses) == ["", "true"]
        again = await one.post("/api/posts", json=POST, headers=key)
        assert again.json() == responses[0].json()
        different = await one.post("/api/posts", json={**POST, "body": "other"}, headers=key)
        assert different.status_code == 422
    rows = await db_cluster.app_query(
        db_cluster.primary.name, "SELECT COUNT(*) FROM posts WHERE idempotency_key = 'retry-7f3a'"
    )
    assert rows == [(1,)]


async def test_likes_are_atomic(apps: list[RunningApp]) -> None:
    async with apps[0].client() as client:
        post_id = (await client.post("/api/posts", json=POST)).json()["id"]
        responses = await asyncio.gather(
            *(client.post(f"/api/posts/{post_id}/likes") for _ in range(20))
        )
        counts = sorted(r.json()["likes"] for r in responses)
        assert counts == list(range(1, 21))
        assert all(r.headers["x-foobar-db"] == "primary" for r in responses)
        missing = await client.post("/api/posts/999999/likes")
        assert missing.status_code == 404


async def test_keyset_pagination_newest_first(apps: list[RunningApp]) -> None:
    async with apps[0].client() as client:
        created = [
            await client.post("/api/posts", json={**POST, "title": f"p{n}"}) for n in range(5)
        ]
        ids = [response.json()["id"] for response in created]
        token = {"X-Foobar-GTID": created[-1].headers["x-foobar-gtid"]}
        seen: list[int] = []
        before = None
        for _ in range(10):  # bounded: 5 posts in pages of 2
            query = "/api/posts?limit=2" + (f"&before={before}" if before else "")
            page = (await client.get(query, headers=token)).json()
            assert len(page["posts"]) <= 2
            seen += [post["id"] for post in page["posts"]]
            before = page["next_before"]
            if before is None:
                break
        assert seen == sorted(ids, reverse=True)


async def test_schema_migrated_once_by_concurrent_starts(
    db_cluster: Cluster, apps: list[RunningApp]
) -> None:
    rows = await db_cluster.app_query(db_cluster.primary.name, "SELECT version FROM schema_version")
    assert rows == [(1,)]


async def test_interrupted_query_closes_its_connection(apps: list[RunningApp]) -> None:
    """The router closes it; aiomysql also closes a connection whose read was cancelled.
    Either way the pool must not get it back mid-statement."""
    router = apps[0].server.router
    replica = router.replicas[0]
    assert replica.pool is not None
    used: list[Any] = []

    async def slow(cursor: Any) -> None:
        used.append(cursor.connection)
        await cursor.execute("SELECT SLEEP(5)")

    task = asyncio.create_task(router.read(slow))
    await asyncio.sleep(0.3)
    task.cancel()  # as when the client goes away
    with pytest.raises(asyncio.CancelledError):
        await task
    (connection,) = used
    assert connection.closed  # closed mid-statement, not handed to the next request
    assert connection not in replica.pool._free
