"""Talking to the servers as their administrator: accounts, attaching replicas, reading
replication state, and the planned switchover.

A `Node` is one server seen over an administrative connection (the local socket in
managed mode, an admin account over TCP in external mode). Driver errors (pymysql's, OSError)
become `DbError` here, the one boundary.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiomysql
import pymysql

from foobar.db.dialect import SEMI_SYNC_STATUS, Dialect, for_version, quote
from foobar.db.errors import DbError
from foobar.db.settings import InstanceSettings

log = logging.getLogger("foobar.db.replication")

# The drivers turn server notes into Python warnings; "IF NOT EXISTS found it existing"
# and "replica already stopped" are the expected outcome of idempotent set-up, not news.
warnings.filterwarnings("ignore", category=pymysql.Warning)

# An admin query that takes longer than this means the server is in trouble.
QUERY_TIMEOUT = 5.0
# How long a switchover waits for the replica to apply everything the primary wrote.
CATCH_UP_TIMEOUT = 30.0
# The privileges the application needs on its schema, and nothing more.
APP_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX"


class Node:
    def __init__(
        self,
        spec: InstanceSettings,
        user: str,
        password: str | None = None,
        socket: Path | None = None,
    ) -> None:
        self.spec = spec
        self.user = user
        self.password = password
        self.socket = socket
        self.dialect: Dialect | None = None
        self._connection: aiomysql.Connection | None = None
        self._lock = asyncio.Lock()  # one statement at a time on the shared connection

    @property
    def name(self) -> str:
        return self.spec.name

    async def _connect(self) -> aiomysql.Connection:
        if self._connection is not None and not self._connection.closed:
            return self._connection
        target: dict[str, Any] = (
            {"unix_socket": str(self.socket)}
            if self.socket is not None
            else {"host": self.spec.host, "port": self.spec.port}
        )
        self._connection = await aiomysql.connect(
            user=self.user,
            password=self.password or "",
            autocommit=True,
            connect_timeout=QUERY_TIMEOUT,
            **target,
        )
        if self.dialect is None:
            async with self._connection.cursor() as cursor:
                await cursor.execute("SELECT VERSION()")
                (version,) = await cursor.fetchone()
            self.dialect = for_version(version)
        return self._connection

    async def query(self, sql: str, args: tuple[object, ...] | None = None) -> list[dict[str, Any]]:
        """Run one statement; its rows as dicts. Any failure is a DbError and drops the
        connection, so the next query starts on a fresh one."""
        async with self._lock:
            try:
                async with asyncio.timeout(QUERY_TIMEOUT + 1):
                    connection = await self._connect()
                    async with connection.cursor(aiomysql.DictCursor) as cursor:
                        await cursor.execute(sql, args)
                        return list(await cursor.fetchall())
            except (pymysql.err.Error, OSError, TimeoutError) as exc:
                self.close()
                raise DbError(
                    f"{self.name} ({self.spec.host}:{self.spec.port}): {_reason(exc)}"
                ) from exc

    async def execute(self, *statements: str) -> None:
        for statement in statements:
            await self.query(statement)

    async def value(self, sql: str, args: tuple[object, ...] | None = None) -> Any:
        rows = await self.query(sql, args)
        return next(iter(rows[0].values())) if rows else None

    async def sql(self) -> Dialect:
        if self.dialect is None:
            await self.query("SELECT 1")
        assert self.dialect is not None
        return self.dialect

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, pymysql.err.Error) and len(exc.args) >= 2:
        return f"{exc.args[1]} (error {exc.args[0]})"
    if isinstance(exc, TimeoutError):
        return f"no answer within {QUERY_TIMEOUT}s"
    return str(exc) or type(exc).__name__


@dataclass
class NodeStatus:
    name: str
    role: str  # "primary" or "replica": what foobar.db made it
    host: str
    port: int
    pid: int | None = None
    reachable: bool = False
    read_only: bool | None = None
    gtid_current_pos: str | None = None
    io_running: bool | None = None
    sql_running: bool | None = None
    seconds_behind: int | None = None  # None when unknown, which counts as unhealthy
    semi_sync: bool | None = None
    replicating_from: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def read_status(node: Node, role: str, pid: int | None) -> NodeStatus:
    status = NodeStatus(node.name, role, node.spec.host, node.spec.port, pid)
    try:
        dialect = await node.sql()
        variables = await node.query(
            f"SELECT @@GLOBAL.{dialect.read_only_variable} AS ro,"
            f" @@GLOBAL.{dialect.gtid_variable} AS gtid"
        )
        replica = await node.query(dialect.replica_status)
        semi_sync = await node.query(SEMI_SYNC_STATUS)
    except DbError as exc:
        status.error = str(exc)
        return status
    status.reachable = True
    status.read_only = bool(variables[0]["ro"])
    status.gtid_current_pos = str(variables[0]["gtid"])
    for row in semi_sync:
        name = row["Variable_name"].lower()
        primary_side = "master" in name or "source" in name
        if primary_side == (role == "primary"):
            status.semi_sync = row["Value"] == "ON"
    if replica:
        row = replica[0]
        columns = dialect.columns
        status.io_running = row[columns.io_running] == "Yes"
        status.sql_running = row[columns.sql_running] == "Yes"
        behind = row[columns.seconds_behind]
        status.seconds_behind = None if behind is None else int(behind)
        status.replicating_from = f"{row[columns.source_host]}:{row[columns.source_port]}"
        errors = [row[columns.last_io_error], row[columns.last_sql_error]]
        status.error = " / ".join(error for error in errors if error) or None
    return status


def _account(user: str, password: str, privileges: str, on: str) -> list[str]:
    account = f"{quote(user)}@'%'"
    return [
        f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {quote(password)}",
        f"ALTER USER {account} IDENTIFIED BY {quote(password)}",  # follow the settings
        f"GRANT {privileges} ON {on} TO {account}",
    ]


async def ensure_replication_account(node: Node, user: str, password: str) -> None:
    """The account replicas connect with, on every server and outside the binlog: it must
    exist before any replica can connect, whichever server is primary, and writing it
    into the binlog would wait on semi-sync for a replica that cannot connect yet (and
    would be an errant GTID on a replica)."""
    await node.execute(
        "SET SESSION sql_log_bin=0",
        *_account(user, password, "REPLICATION SLAVE", "*.*"),
        "SET SESSION sql_log_bin=1",
    )


async def ensure_app_account(primary: Node, schema: str, user: str, password: str) -> None:
    """The schema and the application's account: its schema's data, and reading
    replication status; written on the primary, from where they replicate."""
    dialect = await primary.sql()
    await primary.execute(
        f"CREATE DATABASE IF NOT EXISTS `{schema}`",
        *_account(user, password, APP_PRIVILEGES, f"`{schema}`.*"),
        f"GRANT {dialect.monitor_privilege} ON *.* TO {quote(user)}@'%'",
        # to find the primary: each server's epoch (see write_epoch_marker)
        f"GRANT SELECT ON `{EPOCH_SCHEMA}`.* TO {quote(user)}@'%'",
    )


async def attach(
    replica: Node,
    primary: InstanceSettings,
    user: str,
    password: str,
    former_primary: bool = False,
) -> None:
    """Make `replica` replicate from `primary`, GTID-positioned, unless it already does;
    restart its threads only when they are stopped without an error an operator should see."""
    dialect = await replica.sql()
    rows = await replica.query(dialect.replica_status)
    columns = dialect.columns
    if rows and (rows[0][columns.source_host], int(rows[0][columns.source_port])) == (
        primary.host,
        primary.port,
    ):
        if rows[0][columns.io_running] == "No" and rows[0][columns.sql_running] == "No":
            await replica.execute(dialect.start_replica)
        return
    log.info(
        "event=attach replica=%s primary=%s former_primary=%s",
        replica.name,
        primary.name,
        former_primary,
    )
    if rows:
        await replica.execute(dialect.stop_replica)
    await replica.execute(
        dialect.change_primary(primary.host, primary.port, user, password, former_primary),
        dialect.start_replica,
    )


async def switchover(
    old: Node,
    new: Node,
    others: list[Node],
    user: str,
    password: str,
    catch_up_timeout: float = CATCH_UP_TIMEOUT,
) -> str:
    """Planned switchover from `old` to `new`, losing and duplicating nothing:

    1. the old primary stops taking writes (read-only), so its position is final;
    2. the new one applies everything up to that position (or the old one is given
       back its writes and nothing changes);
    3. the new one stops replicating and takes writes;
    4. the old one and every other replica replicate from the new one.

    Returns the GTID position at the switch."""
    dialect = await old.sql()
    await old.execute(*dialect.set_read_only(True))
    try:
        position = str(await old.value(f"SELECT @@GLOBAL.{dialect.gtid_variable}"))
        sql, args = dialect.gtid_wait(position, catch_up_timeout)
        if await new.value(sql, args) != 0:
            raise DbError(f"{new.name} did not catch up with {position} within {catch_up_timeout}s")
        await new.execute(
            dialect.stop_replica,
            dialect.reset_replica,
            dialect.set_semi_sync_primary(True),
            *dialect.set_read_only(False),
        )
    except DbError:
        await old.execute(*dialect.set_read_only(False))
        raise
    await old.execute(dialect.set_semi_sync_primary(False))
    log.info("event=switched primary=%s old=%s gtid=%s", new.name, old.name, position)
    await attach(old, new.spec, user, password, former_primary=True)
    for other in others:
        await attach(other, new.spec, user, password)
    return position


# The epoch each server carries, for the application: it connects with its own account
# only, so the agents leave the current epoch where that account can read it. Written
# outside the binlog, on every server by its own agent: it is each server's own view,
# never replicated (and never an errant transaction).
EPOCH_SCHEMA = "foobar_ha"
EPOCH_TABLE = f"{EPOCH_SCHEMA}.epoch"


async def write_epoch_marker(node: Node, epoch: int, primary: str) -> None:
    await node.execute(
        "SET SESSION sql_log_bin=0",
        f"CREATE DATABASE IF NOT EXISTS {EPOCH_SCHEMA}",
        f"CREATE TABLE IF NOT EXISTS {EPOCH_TABLE} (id TINYINT PRIMARY KEY,"
        " epoch BIGINT UNSIGNED NOT NULL, primary_name VARCHAR(32) NOT NULL)",
    )
    await node.query(f"REPLACE INTO {EPOCH_TABLE} VALUES (1, %s, %s)", (epoch, primary))
    await node.execute("SET SESSION sql_log_bin=1")


def parse_gtids(text: str) -> dict[tuple[int, int], int]:
    """MariaDB's `domain-server-seq,...` as {(domain, server): seq}."""
    result: dict[tuple[int, int], int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        domain, server, seq = (int(number) for number in item.split("-"))
        result[(domain, server)] = max(seq, result.get((domain, server), 0))
    return result


def errant_gtids(binlog_state: str, server_id: int, start: str) -> list[str]:
    """The transactions a former primary (`server_id`) wrote that the next primary, which
    started from GTID position `start`, does not have: with gtid_strict_mode every
    domain's sequence only grows, so they are exactly this server's own GTIDs past the
    start position of their domain. Named as ranges, e.g. `0-1-101..0-1-103`."""
    started = {domain: seq for (domain, _), seq in parse_gtids(start).items()}
    errant = []
    for (domain, server), seq in sorted(parse_gtids(binlog_state).items()):
        first = started.get(domain, 0) + 1
        if server == server_id and seq >= first:
            last = f"{domain}-{server}-{seq}"
            errant.append(last if seq == first else f"{domain}-{server}-{first}..{last}")
    return errant


async def apply_relay_log(node: Node, timeout: float) -> str:
    """Stop fetching from the (lost) primary and apply everything already fetched; the
    GTID position reached. A DbError when the SQL thread cannot get there."""
    dialect = await node.sql()
    await node.execute("STOP SLAVE IO_THREAD")
    rows = await node.query(dialect.replica_status)
    if not rows:
        raise DbError(f"{node.name} is not a replica: nothing to apply")
    received = str(rows[0].get("Gtid_IO_Pos") or "")
    if rows[0][dialect.columns.sql_running] != "Yes":
        error = rows[0][dialect.columns.last_sql_error] or "stopped"
        raise DbError(f"{node.name}'s relay log cannot be applied: {error}")
    if received:
        sql, args = dialect.gtid_wait(received, timeout)
        if await node.value(sql, args) != 0:
            raise DbError(f"{node.name} did not apply its relay log up to {received} in {timeout}s")
    return str(await node.value(f"SELECT @@GLOBAL.{dialect.gtid_variable}"))


async def end_client_sessions(node: Node) -> int:
    """Disconnect every client of a server being fenced. A session waiting for a
    semi-sync acknowledgement that will never come (its replica was promoted) would
    otherwise block `SET GLOBAL read_only` forever; disconnected, its client never hears
    "committed", so nothing it was told is lost. Returns how many were ended."""
    rows = await node.query(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID()"
        " AND USER NOT IN ('system user', 'event_scheduler')"
        " AND COMMAND NOT IN ('Daemon', 'Binlog Dump', 'Slave_IO', 'Slave_SQL', 'Slave_worker')"
    )
    ended = 0
    for row in rows:
        try:
            await node.query("KILL CONNECTION %s", (int(row["ID"]),))
            ended += 1
        except DbError:
            continue  # it ended by itself meanwhile
    return ended
