"""foobar.db against real MariaDB processes it starts itself."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiomysql
import httpx
import pymysql
import pytest

from foobar.admin import AdminGuard
from foobar.db import cli
from foobar.db.serve import admin_for
from foobar.db.settings import DbSettings
from foobar.db.supervisor import Supervisor
from foobar.settings import HostPort
from tests.conftest import until
from tests.dbcluster import Cluster

pytestmark = pytest.mark.timeout(120)


async def test_app_account_writes_on_primary_reads_on_replica(db_cluster: Cluster) -> None:
    primary, replica = db_cluster.primary.name, db_cluster.replica.name
    await db_cluster.app_query(primary, "CREATE TABLE notes (id INT PRIMARY KEY, text TEXT)")
    await db_cluster.app_query(primary, "INSERT INTO notes VALUES (1, 'hello')")
    await db_cluster.wait_until(replica, "SELECT text FROM notes WHERE id = 1", "hello")

    with pytest.raises(pymysql.err.OperationalError) as refused:
        await db_cluster.app_query(replica, "INSERT INTO notes VALUES (2, 'not here')")
    assert refused.value.args[0] == 1290  # ER_OPTION_PREVENTS_STATEMENT: --read-only

    with pytest.raises(pymysql.err.OperationalError) as denied:
        await db_cluster.app_query(primary, "SELECT user FROM mysql.user")
    assert denied.value.args[0] == 1142  # ER_TABLEACCESS_DENIED_ERROR
    databases = {row[0] for row in await db_cluster.app_query(primary, "SHOW DATABASES")}
    assert databases == {"foobar", "foobar_ha", "information_schema"}  # foobar_ha: read only
    grants = [row[0] for row in await db_cluster.app_query(primary, "SHOW GRANTS")]
    assert grants[0].startswith("GRANT SLAVE MONITOR ON *.* TO `foobar`@`%`")
    assert grants[1] == (
        "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, INDEX, ALTER ON `foobar`.* TO `foobar`@`%`"
    )
    assert grants[2] == "GRANT SELECT ON `foobar_ha`.* TO `foobar`@`%`"
    assert len(grants) == 3


async def test_root_is_not_reachable_over_tcp(db_cluster: Cluster) -> None:
    spec = db_cluster.primary
    with pytest.raises(pymysql.err.OperationalError):
        await aiomysql.connect(host=spec.host, port=spec.port, user="root", password="")


async def test_semi_sync_after_sync_and_gtid_settings(db_cluster: Cluster) -> None:
    primary = db_cluster.admin(db_cluster.primary.name)
    status = await primary.query("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_status'")
    assert status[0]["Value"] == "ON"
    assert await primary.value("SELECT @@rpl_semi_sync_master_wait_point") == "AFTER_SYNC"
    assert await primary.value("SELECT @@gtid_strict_mode") == 1
    assert await primary.value("SELECT @@binlog_format") == "ROW"
    replica = db_cluster.admin(db_cluster.replica.name)
    rows = await replica.query("SHOW SLAVE STATUS")
    assert rows[0]["Using_Gtid"] == "Slave_Pos"
    assert await replica.value("SELECT @@read_only") == 1
    # the supervisor's own writes never reach the replica's binlog as errant GTIDs: once it
    # has applied what the primary has (semi-sync waits for the replica's receipt, not its
    # apply, so it may be a transaction behind at first), its binlog holds the same
    position = await primary.value("SELECT @@gtid_binlog_pos")
    assert await replica.value("SELECT MASTER_GTID_WAIT(%s, 10)", (position,)) == 0
    assert await replica.value("SELECT @@gtid_binlog_pos") == position


async def test_killed_replica_is_restarted_and_catches_up(db_cluster: Cluster) -> None:
    primary, replica = db_cluster.primary.name, db_cluster.replica.name
    await db_cluster.app_query(primary, "CREATE TABLE burst (id INT PRIMARY KEY)")
    instance = db_cluster.supervisor.instances[replica]
    old_pid = instance.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    connection = await db_cluster.app_connection(primary)
    async with connection.cursor() as cursor:
        for n in range(200):  # written while the replica is down
            await cursor.execute("INSERT INTO burst VALUES (%s)", (n,))
    connection.close()
    await db_cluster.wait_until(replica, "SELECT COUNT(*) FROM burst", 200, timeout=30)
    assert instance.pid not in (None, old_pid)
    restarts = db_cluster.supervisor.registry.get_sample_value(
        "foobar_db_restarts_total", {"instance": replica}
    )
    assert restarts == 1
    await until(lambda: db_cluster.supervisor.health()[0], what="the cluster healthy again")


async def test_stopped_sql_thread_is_reported_within_one_interval(db_cluster: Cluster) -> None:
    admin = admin_for(db_cluster.supervisor, AdminGuard(None))
    await admin.start(HostPort("127.0.0.1", 0))
    host, port = admin.server.address
    replica = db_cluster.admin(db_cluster.replica.name)
    interval = db_cluster.settings.check_interval
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            await replica.execute("STOP SLAVE SQL_THREAD")
            await asyncio.sleep(interval * 1.5)  # one check, plus the time a check takes
            response = await client.get("/healthz")
            assert response.status_code == 503
            assert "io=on sql=off" in response.text
            status = (await client.get("/status")).json()
            row = next(i for i in status["instances"] if i["name"] == db_cluster.replica.name)
            assert (row["io_running"], row["sql_running"]) == (True, False)
            metrics = (await client.get("/metrics")).text
            assert f'foobar_db_replica_sql_running{{instance="{row["name"]}"}} 0.0' in metrics
            assert await cli.status(HostPort(host, port)) == 1  # what a person runs

            await replica.execute("START SLAVE SQL_THREAD")
            await asyncio.sleep(interval * 1.5)
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await admin.shutdown()


async def test_promote_under_writes_loses_and_duplicates_nothing(db_cluster: Cluster) -> None:
    supervisor = db_cluster.supervisor
    old, new = supervisor.primary, supervisor.replicas[0]
    await db_cluster.app_query(
        old, "CREATE TABLE ledger (id INT AUTO_INCREMENT PRIMARY KEY, n INT)"
    )
    acknowledged = 0
    switched = asyncio.Event()

    async def writer() -> None:
        nonlocal acknowledged
        n = 0
        after_switch = 0
        connection: aiomysql.Connection | None = None
        while after_switch < 50 and n < 5000:  # bounded
            n += 1
            try:
                if connection is None:
                    connection = await db_cluster.app_connection(supervisor.primary)
                async with connection.cursor() as cursor:
                    await cursor.execute("INSERT INTO ledger (n) VALUES (%s)", (n,))
                acknowledged += 1
                if switched.is_set():
                    after_switch += 1
            except pymysql.err.MySQLError:
                # read-only during the switch: not acknowledged; find the primary again
                if connection is not None:
                    connection.close()
                connection = None
                await asyncio.sleep(0.01)
        if connection is not None:
            connection.close()

    task = asyncio.create_task(writer())
    await until(lambda: acknowledged >= 10, what="writes flowing before the switch")
    result = await supervisor.promote()
    switched.set()
    await asyncio.wait_for(task, 60)
    assert result["primary"] == new and supervisor.primary == new
    assert acknowledged > 50
    await db_cluster.wait_until(new, "SELECT COUNT(*) FROM ledger", acknowledged)
    await db_cluster.wait_until(old, "SELECT COUNT(*) FROM ledger", acknowledged)
    distinct = await db_cluster.app_query(new, "SELECT COUNT(DISTINCT n) FROM ledger")
    assert distinct[0][0] == acknowledged
    # the old primary now replicates from the new one, read-only
    old_node = db_cluster.admin(old)
    assert await old_node.value("SELECT @@read_only") == 1
    rows = await old_node.query("SHOW SLAVE STATUS")
    assert (rows[0]["Master_Port"], rows[0]["Using_Gtid"]) == (
        db_cluster.spec(new).port,
        "Current_Pos",
    )
    new_node = db_cluster.admin(new)
    assert await new_node.value("SELECT @@read_only") == 0
    status = await new_node.query("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_status'")
    assert status[0]["Value"] == "ON"
    assert (
        supervisor.settings.state_dir / "topology.json"
    ).read_text() == f'{{"primary": "{new}"}}'


async def test_external_mode_configures_and_watches_given_servers(
    db_cluster: Cluster, tmp_path: Path
) -> None:
    """Servers foobar.db did not start, reached over TCP with an admin account."""
    password = "admin-pass-for-test"
    primary = db_cluster.admin(db_cluster.primary.name)
    await primary.execute(
        f"CREATE USER 'dba'@'%' IDENTIFIED BY '{password}'",
        "GRANT ALL PRIVILEGES ON *.* TO 'dba'@'%' WITH GRANT OPTION",
    )
    replica = db_cluster.admin(db_cluster.replica.name)
    for _ in range(100):  # the account reaches the replica through replication
        if await replica.value("SELECT COUNT(*) FROM mysql.global_priv WHERE User = 'dba'"):
            break
        await asyncio.sleep(0.1)
    settings = DbSettings(
        mode="external",
        state_dir=tmp_path / "external",
        instances=[db_cluster.primary, db_cluster.replica],
        admin_user="dba",
        admin_password=password,  # type: ignore[arg-type]
    )
    supervisor = Supervisor(settings)
    await supervisor.start()
    try:
        assert not supervisor.instances  # started nothing
        healthy, reason = supervisor.health()
        assert healthy, reason
        rows = supervisor.status()["instances"]
        assert [(row["name"], row["pid"], row["reachable"]) for row in rows] == [
            ("primary", None, True),
            ("replica", None, True),
        ]
    finally:
        await supervisor.stop()
    assert db_cluster.supervisor.instances["primary"].running  # left running
