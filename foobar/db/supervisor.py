"""The cluster foobar.db keeps: set up once, then watched until SIGTERM.

`Supervisor.start()` prepares every instance (managed mode: initialise the data directory,
start the server read-only unless it is the primary), creates the accounts on the primary
and attaches every replica. `watch()` then checks each server every `check_interval`:
a managed server process that died is restarted with backoff and its replication
re-attached; every check refreshes the status behind `/status`, `/healthz` and
`/metrics`. `promote()` is the planned switchover.

What must survive a restart is in the state directory: `topology.json` (which instance
is the primary now) and, for passwords the settings do not give, `secrets.json` (0600).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from foobar.db.epoch import EpochFile
from foobar.db.errors import DbError
from foobar.db.instance import ManagedInstance, find_server
from foobar.db.replication import (
    Node,
    NodeStatus,
    attach,
    ensure_app_account,
    ensure_replication_account,
    read_status,
    switchover,
    write_epoch_marker,
)
from foobar.db.settings import DbSettings
from foobar.files import private_directory, tighten, write_private

log = logging.getLogger("foobar.db.supervisor")

# Restart backoff for a server that keeps dying: 1 s doubling to 30 s (systemd's
# RestartSec with a cap, the shape Kubernetes uses for CrashLoopBackOff).
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0


def load_secrets(settings: DbSettings) -> tuple[str, str]:
    """The app and replication passwords: from the settings when given, otherwise
    generated once and kept in <state_dir>/secrets.json, readable by its owner only."""
    path = private_directory(settings.state_dir) / "secrets.json"
    stored: dict[str, str] = {}
    if path.exists():
        tighten(path)
        stored = json.loads(path.read_text())
    changed = False
    for key in ("app_password", "replication_password"):
        if key not in stored:
            stored[key] = secrets.token_urlsafe(24)
            changed = True
    if changed:
        write_private(path, json.dumps(stored))
    app = (
        settings.app_password.get_secret_value()
        if settings.app_password
        else stored["app_password"]
    )
    replication = (
        settings.replication_password.get_secret_value()
        if settings.replication_password
        else stored["replication_password"]
    )
    return app, replication


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["instance"]
        self.up = Gauge("foobar_db_up", "1 when the server answers", labels, registry=registry)
        self.primary = Gauge("foobar_db_primary", "1 for the primary", labels, registry=registry)
        self.read_only = Gauge("foobar_db_read_only", "1 when read-only", labels, registry=registry)
        self.io_running = Gauge(
            "foobar_db_replica_io_running",
            "replication I/O thread running",
            labels,
            registry=registry,
        )
        self.sql_running = Gauge(
            "foobar_db_replica_sql_running",
            "replication SQL thread running",
            labels,
            registry=registry,
        )
        self.behind = Gauge(
            "foobar_db_replica_seconds_behind",
            "replication lag; -1 when unknown",
            labels,
            registry=registry,
        )
        self.semi_sync = Gauge(
            "foobar_db_semi_sync", "semi-synchronous replication active", labels, registry=registry
        )
        self.restarts = Counter(
            "foobar_db_restarts",
            "server processes restarted after dying",
            labels,
            registry=registry,
        )
        self.switchovers = Counter(
            "foobar_db_switchovers", "planned switchovers", registry=registry
        )
        self.max_replica_lag = Gauge(  # so that alerts compare the lag with the setting
            "foobar_db_max_replica_lag_seconds", "max_replica_lag", registry=registry
        )

    def observe(self, status: NodeStatus) -> None:
        name = status.name
        self.up.labels(name).set(status.reachable)
        self.primary.labels(name).set(status.role == "primary")
        self.read_only.labels(name).set(bool(status.read_only))
        self.io_running.labels(name).set(bool(status.io_running))
        self.sql_running.labels(name).set(bool(status.sql_running))
        self.behind.labels(name).set(-1 if status.seconds_behind is None else status.seconds_behind)
        self.semi_sync.labels(name).set(bool(status.semi_sync))
        self.restarts.labels(name)  # shown at 0: a first restart is then an increase


class Supervisor:
    def __init__(self, settings: DbSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.specs = {spec.name: spec for spec in settings.cluster()}
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.metrics.max_replica_lag.set(settings.max_replica_lag)
        self.instances: dict[str, ManagedInstance] = {}
        self.nodes: dict[str, Node] = {}
        self.statuses: dict[str, NodeStatus] = {}
        self.primary = self._load_topology()
        self.epochs = EpochFile(settings.state_dir / "epoch.json")
        self.epoch = self.epochs.load()
        self.app_password, self.replication_password = load_secrets(settings)
        self._lock = asyncio.Lock()  # a switchover and a watch round never interleave
        self._next_restart: dict[str, float] = {}
        self._backoff: dict[str, float] = {}

    # state that outlives the process

    @property
    def _topology_file(self) -> Path:
        return self.settings.state_dir / "topology.json"

    def _load_topology(self) -> str:
        try:
            primary = str(json.loads(self._topology_file.read_text())["primary"])
        except FileNotFoundError:
            return self.settings.initial_primary
        if primary not in self.specs:
            raise DbError(
                f"{self._topology_file} names primary {primary!r}, not an instance in the settings"
            )
        return primary

    def _save_topology(self) -> None:
        private_directory(self.settings.state_dir)
        temporary = self._topology_file.with_suffix(".tmp")
        temporary.write_text(json.dumps({"primary": self.primary}))
        temporary.replace(self._topology_file)  # atomic: never a half-written file

    def role(self, name: str) -> str:
        return "primary" if name == self.primary else "replica"

    @property
    def replicas(self) -> list[str]:
        return [name for name in self.specs if name != self.primary]

    # set-up

    def prepare(self, check_ports: bool = False) -> None:
        """Managed mode: find the server binary and check every data directory and port
        before anything starts (a bad one stops everything, not half of it)."""
        settings = self.settings
        private_directory(settings.state_dir)
        if settings.mode == "external":
            for name, spec in self.specs.items():
                password = (
                    settings.admin_password.get_secret_value() if settings.admin_password else None
                )
                assert settings.admin_user is not None
                self.nodes[name] = Node(spec, settings.admin_user, password)
            return
        program = find_server(settings.server_binary)
        for name, spec in self.specs.items():
            instance = ManagedInstance(
                spec,
                spec.directory or settings.state_dir / name,
                program,
                settings.semi_sync_timeout,
                settings.innodb_buffer_pool_size,
            )
            instance.check_datadir()
            if check_ports:
                instance.check_port()
            self.instances[name] = instance
            self.nodes[name] = Node(spec, instance.admin_user, socket=instance.socket)

    async def initialize(self, check_ports: bool = False) -> None:
        self.prepare(check_ports)
        for instance in self.instances.values():
            await instance.initialize()

    async def start(self) -> None:
        """Initialise, start and configure the whole cluster; DbError on any failure, with
        whatever was started stopped again."""
        try:
            await self.initialize(check_ports=True)
            # the primary first, so replicas find it when they attach
            for name in [self.primary, *self.replicas]:
                if name in self.instances:
                    await self.instances[name].start(primary=name == self.primary)
            await self._configure()
            self._save_topology()
            if self.epoch.primary != self.primary:
                await self._next_epoch("first start")
            else:
                await self._mark_epoch()
            await self._wait_until_replicating()
        except BaseException:
            await self.stop()
            raise

    async def _configure(self) -> None:
        settings = self.settings
        for node in self.nodes.values():
            await ensure_replication_account(
                node, settings.replication_user, self.replication_password
            )
        for name in self.replicas:
            await self._attach(name)
        await self._lift(self.primary)
        await ensure_app_account(
            self.nodes[self.primary], settings.app_schema, settings.app_user, self.app_password
        )

    async def _lift(self, name: str) -> None:
        """Every server starts read-only; the primary takes writes once we say so."""
        node = self.nodes[name]
        await node.execute(*(await node.sql()).set_read_only(False))

    async def _next_epoch(self, reason: str) -> None:
        """One process decides alone here (the single-host form): the epoch is kept so
        that the application finds the primary the same way as with agents."""
        position = await self.nodes[self.primary].value("SELECT @@GLOBAL.gtid_current_pos")
        now = time.time()
        # semi-sync with its timeout: this form has no majority to decide a degrade
        self.epoch = self.epoch.next(self.primary, str(position), reason, now).with_degraded(
            False, reason, now
        )
        self.epochs.store(self.epoch)
        await self._mark_epoch()

    async def _mark_epoch(self) -> None:
        for node in self.nodes.values():
            await write_epoch_marker(node, self.epoch.epoch, self.primary)

    async def _attach(self, name: str) -> None:
        await attach(
            self.nodes[name],
            self.specs[self.primary],
            self.settings.replication_user,
            self.replication_password,
        )

    async def _wait_until_replicating(self, timeout: float = 10.0) -> None:
        """Give freshly attached replicas a moment to connect, so `start()` returns a
        cluster that is replicating (or says in the log why not)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            await self.refresh()
            healthy, reason = self.health()
            if healthy:
                return
            if loop.time() > deadline:
                log.warning("event=not_replicating_yet reason=%r", reason)
                return
            await asyncio.sleep(0.1)

    # watching

    async def watch(self) -> None:
        """Check every `check_interval` until cancelled."""
        while True:
            await asyncio.sleep(self.settings.check_interval)
            try:
                await self.check()
            except DbError as exc:
                log.warning("event=check_failed reason=%r", str(exc))

    async def check(self) -> None:
        async with self._lock:
            await self._restart_dead()
            await self.refresh()

    async def _restart_dead(self) -> None:
        loop = asyncio.get_running_loop()
        for name, instance in self.instances.items():
            if instance.running:
                self._backoff.pop(name, None)
                continue
            if loop.time() < self._next_restart.get(name, 0.0):
                continue
            backoff = self._backoff.get(name, BACKOFF_FIRST / 2) * 2
            self._backoff[name] = min(backoff, BACKOFF_MAX)
            self._next_restart[name] = loop.time() + self._backoff[name]
            code = instance.process.returncode if instance.process else None
            log.warning("event=instance_died instance=%s exit=%s action=restart", name, code)
            self.nodes[name].close()
            try:
                await instance.start(primary=name == self.primary)
                self.metrics.restarts.labels(name).inc()
                if name != self.primary:
                    await self._attach(name)
                else:
                    await self._lift(name)
            except DbError as exc:
                log.error(
                    "event=restart_failed instance=%s reason=%r retry_in=%.0fs",
                    name,
                    str(exc),
                    backoff,
                )

    async def refresh(self) -> None:
        names = list(self.specs)
        results = await asyncio.gather(
            *(
                read_status(
                    self.nodes[name],
                    self.role(name),
                    self.instances[name].pid if name in self.instances else None,
                )
                for name in names
            )
        )
        for status in results:
            self.statuses[status.name] = status
            self.metrics.observe(status)

    def health(self) -> tuple[bool, str]:
        problems = []
        primary = self.statuses.get(self.primary)
        if primary is None or not primary.reachable:
            problems.append(f"primary {self.primary} unreachable")
        elif primary.read_only:
            problems.append(f"primary {self.primary} is read-only")
        for name in self.replicas:
            status = self.statuses.get(name)
            if status is None or not status.reachable:
                problems.append(f"replica {name} unreachable")
            elif not status.io_running or not status.sql_running:
                io, sql = (
                    "on" if flag else "off" for flag in (status.io_running, status.sql_running)
                )
                problems.append(f"replica {name} not replicating (io={io} sql={sql})")
            elif status.seconds_behind is None:
                problems.append(f"replica {name} lag unknown")
            elif status.seconds_behind > self.settings.max_replica_lag:
                problems.append(f"replica {name} {status.seconds_behind}s behind")
        if problems:
            return False, "; ".join(problems)
        return True, f"primary {self.primary}, {len(self.replicas)} replica(s) replicating"

    def status(self) -> dict[str, Any]:
        healthy, reason = self.health()
        return {
            "primary": self.primary,
            "epoch": self.epoch.as_dict(),
            "healthy": healthy,
            "reason": reason,
            "instances": [
                self.statuses[name].as_dict() for name in self.specs if name in self.statuses
            ],
        }

    # switchover

    async def promote(self, target: str | None = None) -> dict[str, Any]:
        """Planned switchover to `target` (default: the first replica)."""
        async with self._lock:
            new = target or self.replicas[0]
            if new not in self.specs:
                raise DbError(f"no instance named {new!r}")
            if new == self.primary:
                raise DbError(f"{new} is already the primary")
            old = self.primary
            others = [self.nodes[name] for name in self.replicas if name != new]
            # The next epoch is on every server before the new primary takes a write, so
            # the app never sees it writable in the old one.
            for node in self.nodes.values():
                await write_epoch_marker(node, self.epoch.epoch + 1, new)
            try:
                position = await switchover(
                    self.nodes[old],
                    self.nodes[new],
                    others,
                    self.settings.replication_user,
                    self.replication_password,
                )
            except DbError:
                await self._next_epoch(f"switchover to {new} failed, {old} kept")
                raise
            self.primary = new
            self._save_topology()
            await self._next_epoch(f"switchover from {old}")
            self.metrics.switchovers.inc()
            await self._wait_until_replicating()
        return {"primary": new, "previous": old, "gtid": position}

    # shutdown

    async def stop(self) -> None:
        """Stop the servers cleanly: replicas first, so none sees its primary vanish
        mid-transaction."""
        for node in self.nodes.values():
            node.close()
        for name in [*self.replicas, self.primary]:
            if name in self.instances:
                await self.instances[name].stop()
