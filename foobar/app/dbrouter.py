"""Where each statement goes: writes to the primary, reads to a replica.

    post, gtid = await router.write(insert_post)          # on the primary; its GTID
    page, node = await router.read(list_posts, gtid)      # a replica, or the primary

Which server is the primary is found, not configured: every `health_interval` the router
reads each server's `read_only` and the epoch its foobar.db agent left in
`foobar_ha.epoch`; the primary is the one writable server holding the highest epoch any
reachable server holds. So the app follows a switchover or a failover by itself, and a
former primary that is still writable (frozen, then resumed, before its agent fenced it)
is never written to: its epoch is older. While there is no such server, writes fail at
once with 503 and Retry-After. A write refused as read-only, or a primary lost, checks
again at once.

A unit of work is an `async def work(cursor)`; the router picks the server, runs it under
`query_timeout`, and counts it. Reads go to a usable replica, round-robin. A replica is
usable while it answers, both replication threads run and it lags at most
`max_replica_lag`, as the health loop sees every `health_interval`; a failed query marks
it unusable at once. A read that fails on a replica is run again on the primary (reads are
idempotent); a write is never run twice.

Read-your-writes across app servers: a write returns its GTID, which travels with the
client (cookie, header). A read that presents one first waits on the replica for that
GTID (MASTER_GTID_WAIT, `gtid_wait_timeout`), and goes to the primary if the replica does
not get there in time. MaxScale's causal_reads does the same inside a proxy.

Connections: one aiomysql pool per server, `pool_recycle` below wait_timeout; aiomysql
drops a connection found at EOF when it is taken. A statement interrupted mid-flight
(timeout, cancelled request, lost server) closes its connection instead of returning it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiomysql
import pymysql
from prometheus_client import CollectorRegistry, Counter, Gauge

from foobar.admin import PlainCounter
from foobar.app.errors import DatabaseUnavailable
from foobar.app.settings import AppSettings, Dsn

log = logging.getLogger("foobar.app.db")

T = TypeVar("T")
Work = Callable[[Any], Awaitable[T]]

# MySQL error codes that mean "this server cannot take statements now", not "this
# statement is wrong": can't connect (2003), gone away (2006), lost (2013), read-only
# (1290), too many connections (1040), shutting down (1053).
UNAVAILABLE = frozenset({1040, 1053, 1290, 2003, 2006, 2013})

# A GTID token from a client: MariaDB's domain-server-seq list (32, 32 and 64-bit
# numbers) or MySQL's uuid:ranges set; anything else is ignored before it reaches SQL.
MAX_GTID_TOKEN = 4096
_MARIADB_GTID = r"\d{1,10}-\d{1,10}-\d{1,20}"
_MYSQL_GTID = r"[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}(?::\d{1,20}(?:-\d{1,20})?)+"
GTID_PATTERN = re.compile(
    rf"^(?:{_MARIADB_GTID}(?:,{_MARIADB_GTID})*|{_MYSQL_GTID}(?:,{_MYSQL_GTID})*)$"
)
# What a server says about a GTID it cannot use (a number out of range, two positions in
# one domain): the token is the client's mistake, the read goes to the primary.
# MariaDB: could not parse (1941), conflict (1947); MySQL: malformed set (1772).
BAD_GTID = frozenset({1772, 1941, 1947})


class WorkRefused(Exception):
    """Raised by a unit of work that decided, after complete statements, not to go on
    (not found, a conflict): the connection is in a clean state and goes back to the pool."""


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.queries = PlainCounter(  # counted per request: no lock taken
            "foobar_app_db_queries",
            "units of work by node and outcome",
            ["node", "outcome"],
            registry,
        )
        self.pool = Gauge(
            "foobar_app_db_pool_connections",
            "pooled connections",
            ["node", "state"],
            registry=registry,
        )
        self.usable = Gauge(
            "foobar_app_db_node_usable",
            "1 while a node takes statements",
            ["node"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "foobar_app_db_fallbacks",
            "reads sent to the primary instead of a replica",
            ["reason"],
            registry=registry,
        )
        self.gtid_waits = Counter(
            "foobar_app_db_gtid_waits",
            "waits for a client's GTID on a replica",
            ["outcome"],
            registry=registry,
        )


# MySQL error codes for "no such table" (1146) and "no access to it" (1142): a server
# that no foobar.db agent manages carries no epoch, which counts as epoch 0.
NO_EPOCH = frozenset({1142, 1146})
EPOCH_QUERY = "SELECT epoch FROM foobar_ha.epoch WHERE id = 1"


class DbNode:
    """One database server, its pool, and what the last check saw of it."""

    def __init__(self, name: str, dsn: Dsn, settings: AppSettings) -> None:
        self.name = name
        self.role = "replica"  # "primary" or "replica": what X-Foobar-DB says
        self.dsn = dsn
        self.settings = settings
        self.pool: aiomysql.Pool | None = None
        self.usable = False
        self.reason = "not checked yet"
        self.mariadb = True
        self.reachable = False
        self.read_only = True
        self.epoch = 0
        self.replication: dict[str, Any] | None = None  # SHOW SLAVE STATUS, if any

    async def start(self) -> None:
        self.pool = await aiomysql.create_pool(
            minsize=0,
            maxsize=self.settings.pool_size,
            pool_recycle=self.settings.pool_recycle,
            host=self.dsn.host,
            port=self.dsn.port,
            user=self.dsn.user,
            password=self.dsn.password.get_secret_value(),
            db=self.dsn.database,
            autocommit=True,
            charset="utf8mb4",
            # TIMESTAMP values in UTC whatever the server's zone; the API says so with "Z"
            init_command="SET time_zone = '+00:00'",
            connect_timeout=self.settings.connect_timeout,
        )

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        assert self.pool is not None
        connection = await self.pool.acquire()
        try:
            yield connection
        except WorkRefused:
            raise
        except BaseException:
            # Mid-statement the protocol state is unknown: never hand it to the next one.
            connection.close()
            raise
        finally:
            await self.pool.release(connection)

    def mark(self, usable: bool, reason: str) -> None:
        if usable != self.usable:
            log.log(
                logging.INFO if usable else logging.WARNING,
                "event=%s node=%s address=%s:%d reason=%r",
                "node_usable" if usable else "node_unusable",
                self.name,
                self.dsn.host,
                self.dsn.port,
                reason,
            )
        self.usable, self.reason = usable, reason

    async def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            await self.pool.wait_closed()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "epoch": self.epoch,
            "read_only": self.read_only,
            "address": f"{self.dsn.host}:{self.dsn.port}",
            "usable": self.usable,
            "reason": self.reason,
            "pool_size": self.pool.size if self.pool else 0,
            "pool_idle": self.pool.freesize if self.pool else 0,
        }


def unavailable(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError | OSError | pymysql.err.InterfaceError):
        return True
    return isinstance(exc, pymysql.err.OperationalError) and exc.args[0] in UNAVAILABLE


def error_text(exc: BaseException) -> str:
    if isinstance(exc, pymysql.err.Error) and len(exc.args) >= 2:
        return f"{exc.args[1]} ({exc.args[0]})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


class Router:
    def __init__(self, settings: AppSettings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.metrics = Metrics(registry)
        self.nodes = [DbNode(name, dsn, settings) for name, dsn in settings.database_nodes()]
        self.primary: DbNode | None = None
        self.no_primary = "not checked yet"  # why there is no primary, when there is none
        self._turn = itertools.count()
        self._health: asyncio.Task[None] | None = None
        self._recheck: asyncio.Task[None] | None = None
        for node in self.nodes:
            for state, value in (("in_use", self._in_use), ("idle", self._idle)):
                self.metrics.pool.labels(node.name, state).set_function(
                    lambda node=node, value=value: value(node)  # type: ignore[misc]
                )

    @staticmethod
    def _in_use(node: DbNode) -> float:
        return float(node.pool.size - node.pool.freesize) if node.pool else 0.0

    @staticmethod
    def _idle(node: DbNode) -> float:
        return float(node.pool.freesize) if node.pool else 0.0

    @property
    def replicas(self) -> list[DbNode]:
        return [node for node in self.nodes if node is not self.primary]

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.settings.health_interval))

    async def start(self) -> None:
        for node in self.nodes:
            await node.start()
        await self.check()
        self._health = asyncio.create_task(self._watch())

    async def close(self) -> None:
        for task in (self._health, self._recheck):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for node in self.nodes:
            await node.close()

    # health

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval)
            await self.check()

    def check_soon(self) -> None:
        """Look for the primary again now, not at the next interval (a write was refused
        as read-only, or the primary vanished)."""
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.create_task(self.check())

    async def check(self) -> None:
        await asyncio.gather(*(self._probe(node) for node in self.nodes))
        self._elect()
        for node in self.nodes:
            if node is self.primary:
                usable, reason = True, f"primary in epoch {node.epoch}"
            elif not node.reachable:
                usable, reason = False, node.reason
            elif not node.read_only:
                usable, reason = False, f"writable but in epoch {node.epoch}, not the current one"
            else:
                usable, reason = self._replication_state(node.replication)
            node.role = "primary" if node is self.primary else "replica"
            node.mark(usable, reason)
            self.metrics.usable.labels(node.name).set(usable)

    async def _probe(self, node: DbNode) -> None:
        try:
            async with (
                asyncio.timeout(self.settings.query_timeout),
                node.connection() as conn,
                conn.cursor(aiomysql.DictCursor) as cursor,
            ):
                await cursor.execute("SELECT VERSION() AS version, @@GLOBAL.read_only AS ro")
                row = await cursor.fetchone()
                node.mariadb = "mariadb" in row["version"].lower()
                node.read_only = bool(row["ro"])
                try:
                    await cursor.execute(EPOCH_QUERY)
                    marker = await cursor.fetchone()
                    node.epoch = int(marker["epoch"]) if marker else 0
                except pymysql.err.MySQLError as exc:
                    if exc.args[0] not in NO_EPOCH:
                        raise
                    node.epoch = 0
                node.replication = None
                if node.read_only:
                    await cursor.execute(
                        "SHOW SLAVE STATUS" if node.mariadb else "SHOW REPLICA STATUS"
                    )
                    node.replication = await cursor.fetchone()
        except Exception as exc:
            node.reachable, node.reason = False, f"unreachable: {error_text(exc)}"
        else:
            node.reachable = True

    def _elect(self) -> None:
        """The primary: the one writable server in the highest epoch a reachable server
        holds. None when there is no such server, or (never by design) two."""
        reachable = [node for node in self.nodes if node.reachable]
        current = max((node.epoch for node in reachable), default=0)
        writable = [node for node in reachable if not node.read_only and node.epoch == current]
        previous = self.primary
        if len(writable) == 1:
            self.primary = writable[0]
        else:
            self.primary = None
            if writable:
                self.no_primary = (
                    f"{' and '.join(node.name for node in writable)} are all writable in "
                    f"epoch {current}: no writes until one is fenced"
                )
                log.error("event=two_primaries epoch=%d reason=%r", current, self.no_primary)
            else:
                self.no_primary = f"no writable server in epoch {current}"
        if self.primary is not previous:
            log.warning(
                "event=primary_changed primary=%s epoch=%d previous=%s",
                self.primary.name if self.primary else None,
                current,
                previous.name if previous else None,
            )

    def _replication_state(self, row: dict[str, Any] | None) -> tuple[bool, str]:
        if row is None:
            return False, "not replicating from anything"
        io = row.get("Slave_IO_Running", row.get("Replica_IO_Running"))
        sql = row.get("Slave_SQL_Running", row.get("Replica_SQL_Running"))
        behind = row.get("Seconds_Behind_Master", row.get("Seconds_Behind_Source"))
        if sql != "Yes":
            return False, f"replication stopped (io={io} sql={sql})"
        if io != "Yes":
            if self.primary is None:
                # The primary is gone: what the replica has is all there is, and with
                # semi-sync every acknowledged write is in it. Stale reads beat none.
                return True, f"primary unreachable, serving what it has (io={io})"
            return False, f"replication stopped (io={io} sql={sql})"
        if behind is None:
            return False, "lag unknown"
        if behind > self.settings.max_replica_lag:
            return False, f"{behind}s behind"
        return True, f"{behind}s behind"

    def health(self) -> tuple[bool, dict[str, Any]]:
        nodes = {node.name: node.usable for node in self.nodes}
        return any(nodes.values()), nodes

    # routing

    async def _run(self, node: DbNode, work: Work[T]) -> T:
        try:
            async with (
                asyncio.timeout(self.settings.query_timeout),
                node.connection() as conn,
                conn.cursor(aiomysql.DictCursor) as cursor,
            ):
                result = await work(cursor)
        except WorkRefused:
            self.metrics.queries.values[(node.name, "ok")] += 1
            raise
        except BaseException as exc:
            self.metrics.queries.values[(node.name, "error")] += 1
            if unavailable(exc):
                node.mark(False, error_text(exc))
                self.metrics.usable.labels(node.name).set(0)
                if node is self.primary:
                    self.check_soon()
            raise
        self.metrics.queries.values[(node.name, "ok")] += 1
        return result

    async def write(self, work: Work[T]) -> tuple[T, str | None]:
        """Run `work` on the primary; returns its result and the GTID it wrote (None when
        it wrote nothing)."""
        primary = self.primary
        if primary is None:
            raise DatabaseUnavailable(f"no primary: {self.no_primary}", self.retry_after)
        if not primary.usable:
            raise DatabaseUnavailable(f"primary unavailable: {primary.reason}", self.retry_after)

        async def with_gtid(cursor: Any) -> tuple[T, str | None]:
            result = await work(cursor)
            # MariaDB: the session's last GTID. MySQL has none to read (its session
            # tracker is not exposed by the driver): its executed set contains ours.
            await cursor.execute(
                "SELECT @@last_gtid AS gtid"
                if primary.mariadb
                else "SELECT @@GLOBAL.gtid_executed AS gtid"
            )
            gtid = (await cursor.fetchone())["gtid"]
            return result, gtid or None

        return await self._on_primary(primary, with_gtid)

    async def _on_primary(self, primary: DbNode, work: Work[T]) -> T:
        """Run `work` on the primary; a primary that cannot take it is a 503 for the client."""
        try:
            return await self._run(primary, work)
        except Exception as exc:
            if unavailable(exc):
                raise DatabaseUnavailable(
                    f"primary unavailable: {error_text(exc)}", self.retry_after
                ) from exc
            raise

    def _pick_replica(self) -> DbNode | None:
        usable = [node for node in self.nodes if node.usable and node is not self.primary]
        if not usable:
            return None
        return usable[next(self._turn) % len(usable)]

    async def read(self, work: Work[T], gtid: str | None = None) -> tuple[T, DbNode]:
        """Run `work` on a replica that has `gtid` (when given), else on the primary."""
        replica = self._pick_replica()
        if replica is None:
            reason = "replica_unusable"
        else:
            try:
                if gtid is None or await self._wait_for(replica, gtid):
                    return await self._run(replica, work), replica
                reason = "gtid_timeout"
            except Exception as exc:
                # A replica that cannot run a read (down, or an error of its own: a table
                # not there yet after a restart) is not the client's problem: reads are
                # idempotent, the primary runs it again.
                if not unavailable(exc) and not isinstance(exc, pymysql.err.MySQLError):
                    raise
                log.info(
                    "event=replica_failed node=%s reason=%r action=primary",
                    replica.name,
                    error_text(exc),
                )
                reason = "replica_error"
        self.metrics.fallbacks.labels(reason).inc()
        primary = self.primary
        if primary is None or not primary.usable:
            raise DatabaseUnavailable("no database node can serve this read", self.retry_after)
        return await self._on_primary(primary, work), primary

    async def _wait_for(self, replica: DbNode, gtid: str) -> bool:
        timeout = self.settings.gtid_wait_timeout

        async def wait(cursor: Any) -> bool:
            statement = (
                "SELECT MASTER_GTID_WAIT(%s, %s) AS done"
                if replica.mariadb
                else "SELECT WAIT_FOR_EXECUTED_GTID_SET(%s, %s) AS done"
            )
            try:
                await cursor.execute(statement, (gtid, timeout))
            except pymysql.err.MySQLError as exc:
                if exc.args[:1] and exc.args[0] in BAD_GTID:
                    log.info("event=gtid_refused node=%s reason=%r", replica.name, error_text(exc))
                    return False
                raise
            return bool((await cursor.fetchone())["done"] == 0)

        reached = await self._run(replica, wait)
        self.metrics.gtid_waits.labels("reached" if reached else "timeout").inc()
        return reached
