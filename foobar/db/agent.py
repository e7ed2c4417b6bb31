"""One agent per database host (`serve` with `agent = NAME`): it runs that host's one
mariadbd, and with its peer agent and the witness decides who is primary.

Every `check_interval` the agent takes one `step()`:

1. keep its server running (restart it, read-only, when it died);
2. read its server, see whether the peer's server greets it, ask the peer agent and the
   witness for their views, and take any newer epoch state they hold;
3. act on the current epoch:
   - **primary here**: register the cluster's first epoch at the witness; lift
     read_only only once a majority (the witness or the peer agent) holds this epoch;
     keep semi-sync on with an effectively infinite timeout while a replica is
     expected; when the replica has been silent for `failover_after` to this agent and
     to the witness, record the degrade at the witness *first*, then replicate
     asynchronously (loudly); when a replica is back and acknowledging, record the
     recovery;
   - **replica here**: stay read-only (fencing a former primary), refuse to rejoin while
     holding transactions the new primary lacks (errant GTIDs, named in `status`),
     otherwise replicate from the primary; and fail over when the primary has been
     silent for `failover_after` to this agent and the witness, its own IO thread has
     lost it too, and the cluster is not degraded: apply the relay log, take the next
     epoch at the witness, become writable, announce it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from foobar.admin import Admin, AdminGuard, json_response
from foobar.db import peers
from foobar.db.epoch import EpochFile, EpochState
from foobar.db.errors import DbError
from foobar.db.instance import ManagedInstance, find_server
from foobar.db.participant import Participant
from foobar.db.peers import View, greets, offer, view
from foobar.db.replication import (
    Node,
    NodeStatus,
    apply_relay_log,
    attach,
    end_client_sessions,
    ensure_app_account,
    ensure_replication_account,
    errant_gtids,
    read_status,
    write_epoch_marker,
)
from foobar.db.settings import SEMI_SYNC_FOREVER_MS, DbSettings, InstanceSettings, PeerSettings
from foobar.db.supervisor import Metrics, load_secrets
from foobar.http.server import Request, Response

log = logging.getLogger("foobar.db.agent")

# How long a failover may spend applying the relay log before it gives up (and leaves
# the cluster read-only, saying why) rather than promote a server that lacks data.
RELAY_APPLY_TIMEOUT = 30.0
FOREVER = f"SET GLOBAL rpl_semi_sync_master_timeout={SEMI_SYNC_FOREVER_MS}"


class HaMetrics:
    """The names the alerts are written against."""

    def __init__(self, registry: CollectorRegistry, agent: Agent) -> None:
        Gauge("foobar_db_epoch", "the epoch this agent holds", registry=registry).set_function(
            lambda: agent.participant.state.epoch
        )
        Gauge(
            "foobar_db_semisync_degraded",
            "1 while the majority has let the primary replicate asynchronously",
            registry=registry,
        ).set_function(lambda: agent.participant.state.degraded)
        Gauge(
            "foobar_db_errant_transactions",
            "transactions this server holds that the primary lacks (kept out of service)",
            registry=registry,
        ).set_function(lambda: agent.errant_count)
        self.failovers = Counter(
            "foobar_db_failovers", "automatic failovers this agent carried out", registry=registry
        )


def errant_count(ranges: list[str]) -> int:
    total = 0
    for item in ranges:
        first, _, last = item.partition("..")
        if not last:
            total += 1
        else:
            total += int(last.rsplit("-", 1)[1]) - int(first.rsplit("-", 1)[1]) + 1
    return total


class Agent:
    def __init__(self, settings: DbSettings) -> None:
        assert settings.agent is not None and settings.witness is not None
        self.settings = settings
        self.token = settings.admin_secret()  # what the peer and the witness ask of a change
        self.name = settings.agent
        specs = {spec.name: spec for spec in settings.cluster()}
        self.spec = specs[self.name]
        self.peer: PeerSettings = settings.peers[0]
        self.peer_spec: InstanceSettings = specs[self.peer.name]
        self.witness = settings.witness
        self.participant = Participant(
            self.name,
            settings.cluster_name,
            EpochFile(settings.state_dir / "epoch.json"),
            list(specs),
            settings.failover_after,
        )
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.ha = HaMetrics(self.registry, self)
        self.app_password, self.replication_password = load_secrets(settings)
        self.instance: ManagedInstance | None = None
        self.node: Node | None = None
        self.local = NodeStatus(self.name, "replica", self.spec.host, self.spec.port)
        self.errant: list[str] = []
        self.problems: dict[str, str] = {}  # what keeps the agent from acting, by source
        self.failover_error: str | None = None
        self.last_failover_took: float | None = None
        self.marked_epoch = -1
        self._said: set[str] = set()  # warnings already logged, to say each one once
        self._lock = asyncio.Lock()

    # who is who

    @property
    def state(self) -> EpochState:
        return self.participant.state

    @property
    def primary(self) -> str:
        return self.state.primary or self.settings.initial_primary

    @property
    def is_primary(self) -> bool:
        return self.primary == self.name

    @property
    def errant_count(self) -> int:
        return errant_count(self.errant)

    def say_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)

    # start and stop

    async def start(self) -> None:
        settings = self.settings
        program = find_server(settings.server_binary)
        # the replica notices a silent (frozen, cut-off) primary within failover_after:
        # its I/O thread gives up after slave_net_timeout, with heartbeats at half that
        net_timeout = max(1, math.ceil(settings.failover_after))
        self.instance = ManagedInstance(
            self.spec,
            self.spec.directory or settings.state_dir / self.name,
            program,
            SEMI_SYNC_FOREVER_MS / 1000,
            settings.innodb_buffer_pool_size,
            [f"--slave-net-timeout={net_timeout}"],
        )
        self.instance.check_datadir()
        await self.instance.stop_leftover()
        self.instance.check_port()
        await self.instance.initialize()
        self.node = Node(self.spec, self.instance.admin_user, socket=self.instance.socket)
        await self._catch_up_on_epochs()
        try:
            await self._start_server()
        except BaseException:
            await self.stop()
            raise

    async def _catch_up_on_epochs(self) -> None:
        """Before the server starts: learn any newer epoch from the peers, so that a
        former primary coming back after a crash starts in the replica's role and MariaDB
        drops what no replica acknowledged, instead of keeping it as errant transactions.
        With nobody reachable, the stored epoch decides."""
        views = await asyncio.gather(view(self.peer.admin), view(self.witness))
        sources = (
            (f"peer {self.peer.admin}", self.peer.name),
            (f"witness {self.witness}", "witness"),
        )
        for other, (source, expected) in zip(views, sources, strict=True):
            trusted = self._trusted(other, source, expected)
            if trusted is not None and trusted.state.supersedes(self.state):
                self.participant.adopt(trusted.state)

    async def _start_server(self) -> None:
        assert self.instance is not None and self.node is not None
        self.node.close()
        await self.instance.start(primary=self.is_primary)
        await ensure_replication_account(
            self.node, self.settings.replication_user, self.replication_password
        )
        await write_epoch_marker(self.node, self.state.epoch, self.primary)
        self.marked_epoch = self.state.epoch

    async def stop(self) -> None:
        if self.node is not None:
            self.node.close()
        if self.instance is not None:
            await self.instance.stop()

    # the loop

    async def watch(self) -> None:
        while True:
            try:
                await self.step()
            except DbError as exc:
                log.warning("event=step_failed agent=%s reason=%r", self.name, str(exc))
            await asyncio.sleep(self.settings.check_interval)

    async def step(self) -> None:
        async with self._lock:
            await self._keep_running()
            assert self.node is not None and self.instance is not None
            peer_up, peer_view, witness_view = await asyncio.gather(
                greets(self.peer_spec.host, self.peer_spec.port),
                view(self.peer.admin),
                view(self.witness),
            )
            self.participant.saw(self.peer.name, peer_up)
            peer_view = self._trusted(peer_view, f"peer {self.peer.admin}", self.peer.name)
            witness_view = self._trusted(witness_view, f"witness {self.witness}", "witness")
            for other in (peer_view, witness_view):
                if other is not None:
                    await self._learn(other)
            self.local = await read_status(
                self.node, "primary" if self.is_primary else "replica", self.instance.pid
            )
            self.participant.saw(self.name, self.local.reachable)
            self.metrics.observe(self.local)
            if not self.local.reachable:
                return
            if self.marked_epoch != self.state.epoch:
                await write_epoch_marker(self.node, self.state.epoch, self.primary)
                self.marked_epoch = self.state.epoch
            if self.is_primary:
                await self._as_primary(peer_view, witness_view)
            else:
                await self._as_replica(witness_view)

    async def _keep_running(self) -> None:
        assert self.instance is not None
        if self.instance.running:
            return
        code = self.instance.process.returncode if self.instance.process else None
        log.warning("event=instance_died instance=%s exit=%s action=restart", self.name, code)
        self.metrics.restarts.labels(self.name).inc()
        await self._start_server()

    def _trusted(self, other: View | None, source: str, expected: str) -> View | None:
        """A view, or None when it cannot count: another cluster, or a peer that is not
        who the settings say (two agents both configured as the same instance)."""
        if other is None:
            self.problems.pop(source, None)
            return None
        problem = None
        if other.cluster != self.settings.cluster_name:
            mine = self.settings.cluster_name
            problem = f"{source} belongs to cluster {other.cluster!r}, not {mine!r}"
        elif other.name != expected:
            problem = f"{source} is agent {other.name!r}, expected {expected!r}"
        if problem is None:
            self.problems.pop(source, None)
            return other
        if self.problems.get(source) != problem:
            log.error("event=peer_ignored agent=%s reason=%r", self.name, problem)
        self.problems[source] = problem
        return None

    async def _learn(self, other: View) -> None:
        if other.state.conflicts(self.state):
            problem = (
                f"{other.name} holds epoch {other.state.epoch} with primary "
                f"{other.state.primary}, this agent with {self.state.primary}"
            )
            log.error("event=epoch_conflict agent=%s reason=%r action=fence", self.name, problem)
            self.problems[f"conflict {other.name}"] = problem
            await self._fence()
            return
        if other.state.supersedes(self.state):
            was_primary = self.is_primary
            self.participant.adopt(other.state)
            if was_primary and not self.is_primary:
                await self._fence()

    async def _fence(self) -> None:
        """Make this server harmless: no client left that could still be told
        "committed", read-only, and no longer waiting for acknowledgements."""
        assert self.node is not None
        dialect = await self.node.sql()
        ended = await end_client_sessions(self.node)
        await self.node.execute(*dialect.set_read_only(True), dialect.set_semi_sync_primary(False))
        log.warning(
            "event=fenced agent=%s epoch=%d primary=%s sessions_ended=%d",
            self.name,
            self.state.epoch,
            self.primary,
            ended,
        )

    # the primary's side

    def _majority_holds(self, *views: View | None) -> bool:
        return any(
            v is not None and (v.state.epoch, v.state.primary) == (self.state.epoch, self.name)
            for v in views
        )

    async def _as_primary(self, peer_view: View | None, witness_view: View | None) -> None:
        assert self.node is not None
        dialect = await self.node.sql()
        if self.state.primary is None:
            await self._register()
            return
        if self.local.replicating_from is not None:
            # named primary without having been told to take over (the old primary's
            # agent died mid-switchover): what it fetched is all there is
            await apply_relay_log(self.node, RELAY_APPLY_TIMEOUT)
            await self._take_writes()
            return
        if self.local.read_only:
            if not self._majority_holds(peer_view, witness_view):
                self.say_once(
                    f"unconfirmed {self.state.epoch}",
                    "event=not_writable agent=%s epoch=%d reason=%r",
                    self.name,
                    self.state.epoch,
                    "no majority holds this epoch yet",
                )
                return
            await self.node.execute(FOREVER, *dialect.set_read_only(False))
            log.info("event=writable agent=%s epoch=%d", self.name, self.state.epoch)
        semi = {
            row["Variable_name"]: row["Value"]
            for row in await self.node.query("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_%'")
        }
        clients = int(semi.get("Rpl_semi_sync_master_clients", 0))
        enabled = await self.node.value("SELECT @@rpl_semi_sync_master_enabled")
        if not self.state.degraded:
            if not enabled:
                await self.node.execute(dialect.set_semi_sync_primary(True))
            silent = self.participant.unseen(self.peer.name)
            if silent >= self.settings.failover_after:
                await self._degrade(f"replica {self.peer.name} silent for {silent:.1f}s")
            return
        # degraded: acknowledge with semi-sync again once a replica is connected, and
        # record the recovery once the replica has caught up and acknowledges
        if clients == 0:
            return
        if not enabled:
            await self.node.execute(dialect.set_semi_sync_primary(True))
            return
        if semi.get("Rpl_semi_sync_master_status") == "ON":
            recovered = self.state.with_degraded(
                False, f"replica {self.peer.name} acknowledges again", time.time()
            )
            if await offer(self.witness, self.settings.cluster_name, recovered, token=self.token):
                self.participant.adopt(recovered)
                log.info("event=semisync_restored agent=%s epoch=%d", self.name, self.state.epoch)

    async def _register(self) -> None:
        """The cluster's first epoch: this agent, the configured initial primary, claims
        it at the witness before it takes a single write."""
        assert self.node is not None
        position = str(await self.node.value("SELECT @@GLOBAL.gtid_current_pos"))
        first = self.state.next(self.name, position, "first primary", time.time())
        if not await offer(self.witness, self.settings.cluster_name, first, token=self.token):
            self.say_once(
                "register",
                "event=not_registered agent=%s reason=%r",
                self.name,
                "the witness refused or is unreachable",
            )
            return
        self.participant.adopt(first)
        await write_epoch_marker(self.node, self.state.epoch, self.name)
        self.marked_epoch = self.state.epoch
        dialect = await self.node.sql()
        await self.node.execute(dialect.set_semi_sync_primary(False), *dialect.set_read_only(False))
        await ensure_app_account(
            self.node, self.settings.app_schema, self.settings.app_user, self.app_password
        )
        log.info("event=registered agent=%s epoch=%d", self.name, self.state.epoch)

    async def _degrade(self, reason: str) -> None:
        assert self.node is not None
        degraded = self.state.with_degraded(True, reason, time.time())
        if not await offer(self.witness, self.settings.cluster_name, degraded, token=self.token):
            self.say_once(
                f"degrade {self.state.epoch}",
                "event=degrade_refused agent=%s reason=%r writes=waiting",
                self.name,
                "the witness still sees the replica, or cannot be reached",
            )
            return
        self.participant.adopt(degraded)
        await self.node.execute((await self.node.sql()).set_semi_sync_primary(False))
        log.error(
            "event=semisync_degraded agent=%s epoch=%d reason=%r failover=refused_until_recovered",
            self.name,
            self.state.epoch,
            reason,
        )

    # the replica's side

    def _former_start(self) -> str | None:
        """Where the epoch after this server's last one as primary began, if it ever was."""
        mine = [entry[0] for entry in self.state.history if entry[1] == self.name]
        if not mine:
            return None
        after = self.state.started_after(mine[-1])
        return after[2] if after is not None else None

    async def _as_replica(self, witness_view: View | None) -> None:
        assert self.node is not None
        if not self.local.read_only:
            await self._fence()
        primary = next(spec for spec in self.settings.cluster() if spec.name == self.primary)
        expected = f"{primary.host}:{primary.port}"
        if self.local.replicating_from != expected:
            start = self._former_start()
            if start is not None:
                state = str(await self.node.value("SELECT @@GLOBAL.gtid_binlog_state"))
                self.errant = errant_gtids(state, self.spec.server_id, start)
                if self.errant:
                    self.say_once(
                        f"errant {self.errant}",
                        "event=errant_transactions agent=%s gtids=%s action=kept_out",
                        self.name,
                        ",".join(self.errant),
                    )
                    return
            await attach(
                self.node,
                primary,
                self.settings.replication_user,
                self.replication_password,
                former_primary=start is not None,
            )
            return
        self.errant = []
        await self._maybe_fail_over(witness_view)

    async def _maybe_fail_over(self, witness_view: View | None) -> None:
        settings = self.settings
        silent = self.participant.unseen(self.primary)
        if silent < settings.failover_after or not settings.auto_failover:
            return
        if self.state.primary is None:
            return  # the first primary has not registered: nothing to fail over from
        if self.state.degraded:
            self.say_once(
                f"degraded {self.state.epoch}",
                "event=no_failover agent=%s reason=%r",
                self.name,
                f"replication degraded ({self.state.reason}): this replica may lack writes",
            )
            return
        if self.local.io_running:
            return  # our I/O thread still hears the primary: only the probes fail
        if (
            witness_view is None
            or witness_view.state.epoch != self.state.epoch
            or witness_view.unseen.get(self.primary, 0.0) < settings.failover_after
        ):
            self.say_once(
                f"no majority {self.state.epoch}",
                "event=no_failover agent=%s reason=%r",
                self.name,
                "the witness does not agree that the primary is gone",
            )
            return
        await self._fail_over(silent)

    async def _fail_over(self, silent: float) -> None:
        assert self.node is not None
        loop = asyncio.get_running_loop()
        began = loop.time()
        old = self.primary
        log.warning("event=failover_start agent=%s primary=%s silent=%.1fs", self.name, old, silent)
        try:
            position = await apply_relay_log(self.node, RELAY_APPLY_TIMEOUT)
        except DbError as exc:
            self.failover_error = f"failover cannot finish: {exc}; the cluster stays read-only"
            log.error("event=failover_failed agent=%s reason=%r", self.name, self.failover_error)
            return
        reason = f"failover: {old} silent for {silent:.1f}s to {self.name} and the witness"
        claimed = self.state.next(self.name, position, reason, time.time())
        if not await offer(self.witness, self.settings.cluster_name, claimed, token=self.token):
            log.warning("event=failover_refused agent=%s action=resume_replication", self.name)
            await self.node.execute("START SLAVE IO_THREAD")
            return
        self.participant.adopt(claimed)
        await self._take_writes()
        self.failover_error = None
        self.last_failover_took = loop.time() - began
        self.ha.failovers.inc()
        log.warning(
            "event=failover agent=%s epoch=%d old=%s gtid=%s took=%.2fs",
            self.name,
            self.state.epoch,
            old,
            position,
            self.last_failover_took,
        )
        with contextlib.suppress(DbError):
            await offer(self.peer.admin, self.settings.cluster_name, self.state, token=self.token)

    async def _take_writes(self) -> None:
        """This server, holding the current epoch and everything its old primary
        acknowledged, stops replicating and takes writes. It starts degraded: no replica
        acknowledges yet (the former primary rejoins, then semi-sync is restored)."""
        assert self.node is not None
        dialect = await self.node.sql()
        # the epoch first: the app never sees this server writable in the old one
        await write_epoch_marker(self.node, self.state.epoch, self.name)
        self.marked_epoch = self.state.epoch
        await self.node.execute(
            dialect.stop_replica,
            dialect.reset_replica,
            dialect.set_semi_sync_primary(False),
            FOREVER,
            *dialect.set_read_only(False),
        )

    # planned switchover

    async def promote(self) -> dict[str, Any]:
        """On the primary's agent: hand the primary's role to the peer, losing nothing.
        Fence this server, claim the next epoch for the peer at the witness, then ask the
        peer to take over once it has applied everything up to this server's last GTID.
        This server then rejoins as its replica in the next steps."""
        async with self._lock:
            assert self.node is not None
            if not self.is_primary:
                raise DbError(f"{self.name} is not the primary: ask {self.primary}'s agent")
            if self.state.degraded:
                raise DbError(f"replication is degraded ({self.state.reason}): no switchover")
            old = self.state
            await self._fence()
            position = str(await self.node.value("SELECT @@GLOBAL.gtid_current_pos"))
            handed = old.next(self.peer.name, position, f"switchover from {self.name}", time.time())
            if not await offer(
                self.witness, self.settings.cluster_name, handed, planned=True, token=self.token
            ):
                await self.node.execute(*(await self.node.sql()).set_read_only(False))
                raise DbError("the witness refused the switchover or cannot be reached")
            self.participant.adopt(handed)
            done, why = await peers.hand_over(
                self.peer.admin,
                self.settings.cluster_name,
                handed,
                position,
                RELAY_APPLY_TIMEOUT,
                token=self.token,
            )
            if not done:
                self.failover_error = (
                    f"switchover to {self.peer.name} in epoch {handed.epoch} did not finish: "
                    f"{why}; its agent completes it when it can, until then no writes"
                )
                raise DbError(self.failover_error)
            log.warning(
                "event=switched agent=%s to=%s gtid=%s", self.name, self.peer.name, position
            )
            return {"primary": self.peer.name, "previous": self.name, "gtid": position}

    async def take_over(self, cluster: str, state: EpochState, position: str) -> None:
        """On the replica's agent, asked by the primary's: take the epoch that names this
        server, apply everything up to `position`, take writes."""
        async with self._lock:
            assert self.node is not None
            reason = self.participant.accept(cluster, state, vote=False)
            if reason is not None:
                raise DbError(reason)
            if not self.is_primary:
                raise DbError(f"epoch {state.epoch} names {state.primary}, not {self.name}")
            sql, args = (await self.node.sql()).gtid_wait(position, RELAY_APPLY_TIMEOUT)
            if await self.node.value(sql, args) != 0:
                raise DbError(f"{self.name} did not reach {position} in {RELAY_APPLY_TIMEOUT}s")
            await self._take_writes()
            log.warning(
                "event=took_over agent=%s epoch=%d gtid=%s", self.name, state.epoch, position
            )

    # what people see

    def health(self) -> tuple[bool, str]:
        problems = list(self.problems.values())
        if self.failover_error:
            problems.append(self.failover_error)
        if not self.local.reachable:
            problems.append(f"{self.name} unreachable: {self.local.error}")
        elif self.errant:
            problems.append(
                f"{self.name} holds errant transactions {', '.join(self.errant)}: kept out of "
                "service, read-only; nothing was deleted"
            )
        elif self.is_primary and self.local.read_only:
            problems.append(f"{self.name} is the primary of epoch {self.state.epoch} but read-only")
        elif not self.is_primary and not (self.local.io_running and self.local.sql_running):
            problems.append(f"{self.name} is not replicating from {self.primary}")
        if self.state.degraded:
            problems.append(
                f"DEGRADED: asynchronous replication, no automatic failover ({self.state.reason})"
            )
        if problems:
            return False, "; ".join(problems)
        return True, f"epoch {self.state.epoch}, primary {self.primary}, semi-sync"

    def last_failover(self) -> dict[str, Any] | None:
        """The last change of primary (failover, or the first primary), and why."""
        if not self.state.history:
            return None
        epoch, primary, gtid, reason = self.state.history[-1]
        return {
            "epoch": epoch,
            "primary": primary,
            "gtid": gtid,
            "reason": reason,
            "took": self.last_failover_took,
        }

    def status(self) -> dict[str, Any]:
        healthy, reason = self.health()
        return {
            "agent": self.name,
            "cluster": self.settings.cluster_name,
            "primary": self.primary,
            "epoch": self.state.as_dict(),
            "auto_failover": self.settings.auto_failover,
            "last_failover": self.last_failover(),
            "errant": self.errant,
            "healthy": healthy,
            "reason": reason,
            "instances": [self.local.as_dict()],
        }


def admin_for(agent: Agent, guard: AdminGuard) -> Admin:
    async def health() -> tuple[bool, str]:
        return agent.health()

    async def status() -> dict[str, Any]:
        return agent.status()

    async def promote(request: Request) -> Response:
        await request.body.read()
        try:
            return json_response(200, await agent.promote())
        except DbError as exc:
            log.error("event=promote_failed agent=%s reason=%r", agent.name, str(exc))
            return json_response(409, {"error": str(exc)})

    async def take_over(request: Request) -> Response:
        try:
            data = json.loads(await request.body.read())
            cluster, position = str(data["cluster"]), str(data["position"])
            state = EpochState.from_dict(data["state"])
        except (ValueError, KeyError, TypeError) as exc:
            return json_response(400, {"error": f"expected {{cluster, state, position}}: {exc}"})
        try:
            await agent.take_over(cluster, state, position)
        except DbError as exc:
            log.error("event=take_over_failed agent=%s reason=%r", agent.name, str(exc))
            return json_response(409, {"error": str(exc)})
        return json_response(200, {"primary": agent.name})

    routes = {
        **agent.participant.routes(False),
        ("POST", b"/promote"): promote,
        ("POST", b"/takeover"): take_over,
    }
    return Admin(health, status, agent.registry, routes, guard=guard)
