"""Servers and backends at run time: state, weights, slots (`maxconn`) and the queue.

A server is usable while it is up (health), in `ready` state and not ejected by passive
checks. `Backend.acquire()` picks among usable servers with a free slot (backups only
when no normal server is up), waits in the backend's queue when all are full, and fails
with 503 at once when nothing is up, or after `timeout_queue` in the queue.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from foobar.http.client import PoolConfig, UpstreamPool
from foobar.http.errors import HTTPError
from foobar.lb import algorithms
from foobar.lb.algorithms import Algorithm, RequestInfo
from foobar.lb.settings import BackendSettings, ServerSettings, ServerState

log = logging.getLogger("foobar.lb.servers")


class NoServer(HTTPError):
    """No server can take the request: all down, or the queue timed out."""

    status = 503


@dataclass
class Counters:
    sessions_total: int = 0
    sessions_max: int = 0
    requests: int = 0
    errors_connect: int = 0
    errors_response: int = 0
    retries: int = 0
    redispatches: int = 0


class Server:
    """One server of a backend. Its health (`up`), `state`, `weight` and ejection decide
    whether it is usable; writing any of them tells the backend (`changed`), which plans
    its turns anew (see Backend)."""

    def __init__(
        self,
        settings: ServerSettings,
        backend_name: str,
        pool: UpstreamPool,
        weight: int = 1,
        state: ServerState = "ready",
    ) -> None:
        self.settings = settings
        self.backend_name = backend_name
        self.pool = pool
        # the backend's servers_changed, told whether the weight is what changed
        self.changed: Callable[[bool], None] = _nothing
        self._weight = weight
        self._state: ServerState = state
        self._up = True  # health: servers start up, the first check runs at once (HAProxy)
        self._ejected_until = 0.0
        self.check_status = "not checked yet"
        self.last_change = time.time()
        self.consecutive_errors = 0
        self.active = 0
        self.counters = Counters()
        # plain attributes, read on every request: its name, and its address as the access
        # log names it
        self.name = settings.name
        self.label = str(settings.address)

    @property
    def weight(self) -> int:
        return self._weight

    @weight.setter
    def weight(self, weight: int) -> None:
        self._weight = weight
        self.changed(True)

    @property
    def state(self) -> ServerState:
        return self._state

    @state.setter
    def state(self, state: ServerState) -> None:
        self._state = state
        self.changed(False)

    @property
    def up(self) -> bool:
        return self._up

    @up.setter
    def up(self, up: bool) -> None:
        self._up = up
        self.changed(False)

    @property
    def ejected_until(self) -> float:
        """time.monotonic() until which passive checks keep it out of use."""
        return self._ejected_until

    @ejected_until.setter
    def ejected_until(self, until: float) -> None:
        self._ejected_until = until
        self.changed(False)

    @property
    def usable(self) -> bool:
        return self.usable_at(time.monotonic())

    def usable_at(self, now: float) -> bool:
        return self._up and self._state == "ready" and now >= self._ejected_until

    @property
    def has_slot(self) -> bool:
        maxconn = self.settings.maxconn
        return maxconn is None or self.active < maxconn

    def set_health(self, up: bool, reason: str) -> None:
        self.check_status = reason
        if up != self.up:
            self.up = up
            self.last_change = time.time()
            if up:  # checks passed `rise` times: stronger word than the passive ejection
                self.ejected_until = 0.0
                self.consecutive_errors = 0
            log.warning(
                "event=server_%s backend=%s server=%s reason=%r",
                "up" if up else "down",
                self.backend_name,
                self.name,
                reason,
            )

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "address": str(self.settings.address),
            "state": self.state,
            "status": "UP" if self.up else "DOWN",
            "ejected": time.monotonic() < self.ejected_until,
            "weight": self.weight,
            "backup": self.settings.backup,
            "maxconn": self.settings.maxconn,
            "active": self.active,
            "check": self.check_status,
            "last_change": self.last_change,
            **self.counters.__dict__,
        }


def _nothing(weights: bool) -> None:
    pass


class Backend:
    """A backend's servers, their slots and queue, and the order they take requests in.

    An algorithm that picks independently of the request and of the servers' load
    (roundrobin, static-rr) gives its whole period of picks (`Algorithm.turns`); the
    backend plans them once per change of the usable set, as HAProxy's map-based
    algorithms do, and a pick is then one step through the plan. The plan is made anew
    when a server's health, state, weight or ejection changes, and when an ejection ends.
    Other algorithms are asked on every pick."""

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self.name = settings.name
        pool_config = PoolConfig(
            connect_timeout=settings.timeout_connect,
            read_timeout=settings.timeout_server,
            max_idle=settings.keepalive,
        )
        self.servers = [
            Server(
                server,
                settings.name,
                UpstreamPool(server.address.host, server.address.port, pool_config),
                weight=server.weight,
                state=server.state,
            )
            for server in settings.servers
        ]
        self._normal = [server for server in self.servers if not server.settings.backup]
        self._backups = [server for server in self.servers if server.settings.backup]
        # without a maxconn anywhere every usable server has a slot: no filtering per pick
        self._slots_limited = any(server.settings.maxconn for server in self.servers)
        self.algorithm: Algorithm = algorithms.create(settings.algorithm)
        self.algorithm.update(self.servers)
        # leastconn and the like follow the load; the others are not told of it
        algorithm_type = type(self.algorithm)
        self._tell_algorithm = (
            algorithm_type.started is not Algorithm.started
            or algorithm_type.finished is not Algorithm.finished
        )
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self.queued_max = 0
        # the plan: the usable servers in the order the algorithm takes them (None: it
        # picks per request), the next step, and until when (monotonic) it holds
        self._turns: list[Server] | None = None
        self._next_turn = 0
        self._turns_until = 0.0  # planned at the first pick
        for server in self.servers:
            server.changed = self.servers_changed

    @property
    def queued(self) -> int:
        return len(self._queue)

    def server(self, name: str) -> Server | None:
        return next((server for server in self.servers if server.name == name), None)

    def servers_changed(self, weights: bool) -> None:
        """A server's health, state, weight or ejection changed: the turns are planned
        anew at the next pick; the algorithm hears of a new weight."""
        if weights:
            self.algorithm.update(self.servers)
        self._turns_until = 0.0

    def _plan_turns(self, now: float) -> list[Server] | None:
        usable = self.usable()
        turns = self.algorithm.turns(usable)
        self._turns = None if turns is None else cast(list[Server], list(turns))
        self._next_turn = 0
        # an ejection that ends makes the server usable again
        ends = [server.ejected_until for server in self.servers if server.ejected_until > now]
        self._turns_until = min(ends, default=math.inf)
        return self._turns

    def usable(self) -> list[Server]:
        """Usable normal servers, or, when none is up, usable backups."""
        now = time.monotonic()
        normal = [server for server in self._normal if server.usable_at(now)]
        return normal or [server for server in self._backups if server.usable_at(now)]

    async def acquire(self, request: RequestInfo, avoid: Server | None = None) -> Server:
        """A server for one connection or request, its slot taken. `avoid` is the one that
        just failed (redispatch), used only when it is the last one left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.timeout_queue
        while True:
            usable = self.usable()
            if not usable:
                raise NoServer(f"backend {self.name} has no server available")
            picked = self._take_free(usable, request, avoid)
            if picked is not None:
                return picked
            waiter = loop.create_future()
            self._queue.append(waiter)
            self.queued_max = max(self.queued_max, len(self._queue))
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise NoServer(
                    f"backend {self.name}: no free slot within timeout queue "
                    f"{self.settings.timeout_queue}s"
                ) from None
            finally:
                if waiter in self._queue:
                    self._queue.remove(waiter)

    def take_now(self, request: RequestInfo, now: float) -> Server | None:
        """A server with a free slot, its slot taken, without waiting; None when the
        request would have to queue, or nothing is up (`acquire()` says which). `now`:
        time.monotonic(), as the caller read it."""
        if self._queue:
            return None  # first come, first served: the queue goes before
        turns = self._turns
        if turns is None or now >= self._turns_until:
            return self._take_free(None, request, None)
        if not turns or self._slots_limited or self._tell_algorithm:
            return self._take_turn(turns)  # (no server usable: None)
        # the plan holds, every server in it has a slot and the algorithm needs not hear
        # of it: the next step's server, its slot taken (`take`), inline: per request
        step = self._next_turn
        server = turns[step]
        step += 1
        self._next_turn = 0 if step == len(turns) else step
        active = server.active = server.active + 1
        counters = server.counters
        counters.sessions_total += 1
        if active > counters.sessions_max:
            counters.sessions_max = active
        return server

    def _take_free(
        self, usable: list[Server] | None, request: RequestInfo, avoid: Server | None
    ) -> Server | None:
        """The algorithm's choice among the usable servers with a free slot (`usable`
        when the caller has them at hand), other than `avoid` unless it is the last;
        its slot taken."""
        now = time.monotonic()
        turns = self._turns if now < self._turns_until else self._plan_turns(now)
        if turns is not None and avoid is None:
            return self._take_turn(turns)
        if usable is None:
            usable = self.usable()
        candidates = (
            [server for server in usable if server.has_slot] if self._slots_limited else usable
        )
        if avoid is not None and len(candidates) > 1:
            candidates = [server for server in candidates if server is not avoid]
        picked = self.algorithm.pick(candidates, request) if candidates else None
        if picked is None:
            return None
        assert isinstance(picked, Server)
        self.take(picked)
        return picked

    def _take_turn(self, turns: list[Server]) -> Server | None:
        """The plan's next server with a free slot, its slot taken. (`take_now` does
        the same inline when no server has a maxconn.)"""
        count = len(turns)
        for _ in range(count):
            server = turns[self._next_turn]
            self._next_turn = (self._next_turn + 1) % count
            if not self._slots_limited or server.has_slot:
                self.take(server)
                return server
        return None

    def take(self, server: Server) -> None:
        active = server.active = server.active + 1
        counters = server.counters
        counters.sessions_total += 1
        if active > counters.sessions_max:
            counters.sessions_max = active
        if self._tell_algorithm:
            self.algorithm.started(server)

    def release(self, server: Server) -> None:
        server.active -= 1
        if self._tell_algorithm:
            self.algorithm.finished(server)
        if self._queue:
            self.wake_one()

    def wake_one(self) -> None:
        """A slot freed or a server came back: the first in the queue tries again."""
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def failed(self, server: Server, kind: str) -> None:
        """Passive check: a connection failure or a 5xx. Enough in a row eject it."""
        if kind == "connect":
            server.counters.errors_connect += 1
        else:
            server.counters.errors_response += 1
        server.consecutive_errors += 1
        if server.consecutive_errors >= self.settings.observe_errors:
            server.consecutive_errors = 0
            server.ejected_until = time.monotonic() + self.settings.eject_time
            log.warning(
                "event=server_ejected backend=%s server=%s for=%.0fs",
                self.name,
                server.name,
                self.settings.eject_time,
            )

    def connect_failed(self, server: Server, attempt: int, reason: str) -> bool:
        """A connection to `server` failed (nothing was sent): free its slot, count the
        failure, and say whether attempt number `attempt` (from 0) may be retried
        (`retries`); the caller retries elsewhere (`redispatch`)."""
        self.release(server)
        self.failed(server, "connect")
        if attempt < self.settings.retries:
            server.counters.retries += 1
            return True
        log.warning(
            "event=connect_failed backend=%s server=%s reason=%r", self.name, server.name, reason
        )
        return False

    def succeeded(self, server: Server) -> None:
        server.consecutive_errors = 0

    async def close(self) -> None:
        for server in self.servers:
            await server.pool.close()
