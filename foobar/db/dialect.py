"""The SQL and server options that differ between MariaDB and MySQL 8, in one place.

Everything else in foobar.db speaks through a `Dialect`. Live runs use MariaDB (Debian's
MySQL); the MySQL statements follow the 8.0.23+/8.4 manuals (REPLICA / SOURCE wording,
GTID auto-positioning) and are checked as text by the tests, since MySQL is not
installable here.

The two GTID models differ: MariaDB's GTID is `domain-server-sequence` and a replica
chooses `MASTER_USE_GTID=slave_pos` (a fresh replica) or `current_pos` (a former primary,
whose own binlog holds transactions); MySQL's is `uuid:interval` and a replica always uses
`SOURCE_AUTO_POSITION=1`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


def quote(value: str) -> str:
    """A SQL string literal. CHANGE MASTER and CREATE USER take no placeholders."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


@dataclass(frozen=True)
class ReplicaColumns:
    """The SHOW SLAVE/REPLICA STATUS columns foobar reads."""

    io_running: str
    sql_running: str
    seconds_behind: str
    last_io_error: str
    last_sql_error: str
    source_host: str
    source_port: str


@dataclass(frozen=True)
class Dialect(ABC):
    name: str
    columns: ReplicaColumns
    start_replica: str
    stop_replica: str
    reset_replica: str
    replica_status: str
    gtid_variable: str  # the global variable holding what this server applied or wrote
    last_gtid: str  # the GTID of the session's last transaction
    read_only_variable: str  # what keeps even administrators' sessions from writing
    # the one global privilege the app account gets: reading replication status, so it
    # can skip a replica that lags or stopped (ProxySQL's monitor user needs the same)
    monitor_privilege: str

    @abstractmethod
    def change_primary(
        self, host: str, port: int, user: str, password: str, former_primary: bool
    ) -> str:
        """Point this replica at a primary, GTID-positioned."""

    @abstractmethod
    def gtid_wait(self, gtid: str, timeout: float) -> tuple[str, tuple[object, ...]]:
        """A query returning 0 when `gtid` has been applied within `timeout` seconds."""

    @abstractmethod
    def set_read_only(self, on: bool) -> list[str]:
        """Statements that make the server refuse (or take) writes."""

    @abstractmethod
    def server_options(self, semi_sync_timeout_ms: int, primary: bool) -> list[str]:
        """Replication options for the server's command line. Only the primary waits for
        acknowledgements: a replica with the primary side on would hold each applied
        transaction until its own (absent) replicas acknowledged it."""

    @abstractmethod
    def set_semi_sync_primary(self, on: bool) -> str:
        """Turn the waiting (primary) side of semi-sync on or off at run time."""


class MariaDB(Dialect):
    def change_primary(
        self, host: str, port: int, user: str, password: str, former_primary: bool
    ) -> str:
        position = "current_pos" if former_primary else "slave_pos"
        return (
            f"CHANGE MASTER TO MASTER_HOST={quote(host)}, MASTER_PORT={int(port)}, "
            f"MASTER_USER={quote(user)}, MASTER_PASSWORD={quote(password)}, "
            f"MASTER_CONNECT_RETRY=1, MASTER_USE_GTID={position}"
        )

    def gtid_wait(self, gtid: str, timeout: float) -> tuple[str, tuple[object, ...]]:
        # returns 0 on success, -1 on timeout
        return "SELECT MASTER_GTID_WAIT(%s, %s)", (gtid, timeout)

    def set_read_only(self, on: bool) -> list[str]:
        # MariaDB's read_only binds everyone without READ ONLY ADMIN (10.11: SUPER no
        # longer includes it), which the app account never has.
        return [f"SET GLOBAL read_only={'ON' if on else 'OFF'}"]

    def server_options(self, semi_sync_timeout_ms: int, primary: bool) -> list[str]:
        # Semi-sync is built in since 10.3; AFTER_SYNC makes the primary wait for the
        # replica's acknowledgement before the commit becomes visible (lossless).
        return [
            "--log-slave-updates",
            "--gtid-strict-mode=ON",
            "--relay-log-recovery",
            f"--rpl-semi-sync-master-enabled={'ON' if primary else 'OFF'}",
            "--rpl-semi-sync-slave-enabled=ON",
            "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
            f"--rpl-semi-sync-master-timeout={semi_sync_timeout_ms}",
        ]

    def set_semi_sync_primary(self, on: bool) -> str:
        return f"SET GLOBAL rpl_semi_sync_master_enabled={'ON' if on else 'OFF'}"


class MySQL(Dialect):
    def change_primary(
        self, host: str, port: int, user: str, password: str, former_primary: bool
    ) -> str:
        # GTID auto-positioning covers both cases: MySQL compares gtid_executed sets.
        return (
            f"CHANGE REPLICATION SOURCE TO SOURCE_HOST={quote(host)}, SOURCE_PORT={int(port)}, "
            f"SOURCE_USER={quote(user)}, SOURCE_PASSWORD={quote(password)}, "
            "SOURCE_CONNECT_RETRY=1, SOURCE_AUTO_POSITION=1, GET_SOURCE_PUBLIC_KEY=1"
        )

    def gtid_wait(self, gtid: str, timeout: float) -> tuple[str, tuple[object, ...]]:
        # returns 0 on success, 1 on timeout
        return "SELECT WAIT_FOR_EXECUTED_GTID_SET(%s, %s)", (gtid, timeout)

    def set_semi_sync_primary(self, on: bool) -> str:
        return f"SET GLOBAL rpl_semi_sync_source_enabled={'ON' if on else 'OFF'}"

    def set_read_only(self, on: bool) -> list[str]:
        # super_read_only also binds SUPER/CONNECTION_ADMIN; turning it on sets read_only,
        # turning read_only off clears it.
        if on:
            return ["SET GLOBAL super_read_only=ON"]
        return ["SET GLOBAL super_read_only=OFF", "SET GLOBAL read_only=OFF"]

    def server_options(self, semi_sync_timeout_ms: int, primary: bool) -> list[str]:
        return [
            "--log-replica-updates",
            "--gtid-mode=ON",
            "--enforce-gtid-consistency=ON",
            "--relay-log-recovery=ON",
            "--plugin-load-add=semisync_source.so",
            "--plugin-load-add=semisync_replica.so",
            f"--rpl-semi-sync-source-enabled={'ON' if primary else 'OFF'}",
            "--rpl-semi-sync-replica-enabled=ON",
            "--rpl-semi-sync-source-wait-point=AFTER_SYNC",
            f"--rpl-semi-sync-source-timeout={semi_sync_timeout_ms}",
        ]


MARIADB = MariaDB(
    name="mariadb",
    columns=ReplicaColumns(
        io_running="Slave_IO_Running",
        sql_running="Slave_SQL_Running",
        seconds_behind="Seconds_Behind_Master",
        last_io_error="Last_IO_Error",
        last_sql_error="Last_SQL_Error",
        source_host="Master_Host",
        source_port="Master_Port",
    ),
    start_replica="START SLAVE",
    stop_replica="STOP SLAVE",
    reset_replica="RESET SLAVE ALL",
    replica_status="SHOW SLAVE STATUS",
    gtid_variable="gtid_current_pos",
    last_gtid="SELECT @@last_gtid",
    read_only_variable="read_only",
    monitor_privilege="SLAVE MONITOR",  # MariaDB 10.5.9+; REPLICATION CLIENT before
)

MYSQL = MySQL(
    name="mysql",
    columns=ReplicaColumns(
        io_running="Replica_IO_Running",
        sql_running="Replica_SQL_Running",
        seconds_behind="Seconds_Behind_Source",
        last_io_error="Last_IO_Error",
        last_sql_error="Last_SQL_Error",
        source_host="Source_Host",
        source_port="Source_Port",
    ),
    start_replica="START REPLICA",
    stop_replica="STOP REPLICA",
    reset_replica="RESET REPLICA ALL",
    replica_status="SHOW REPLICA STATUS",
    gtid_variable="gtid_executed",
    # MySQL has no @@last_gtid (its session tracker puts the GTID in the OK packet,
    # which the Python drivers do not expose). The executed set read right after the
    # commit contains the session's transaction, so waiting for it is a correct, if
    # larger, read-your-writes token.
    last_gtid="SELECT @@GLOBAL.gtid_executed",
    read_only_variable="super_read_only",
    monitor_privilege="REPLICATION CLIENT",
)


# Both name the primary side master/source and the replica side slave/replica.
SEMI_SYNC_STATUS = "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_%_status'"


def for_version(version: str) -> Dialect:
    """The dialect for a server's `SELECT VERSION()`."""
    return MARIADB if "mariadb" in version.lower() else MYSQL
