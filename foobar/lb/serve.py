"""`python -m foobar.lb`: the balancer, its admin listener and stats, and the signals:
SIGHUP reloads the settings (a broken file is refused, the old settings keep running),
SIGTERM and SIGINT drain and stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import resource
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from foobar.admin import Admin, AdminGuard
from foobar.errors import ConfigError
from foobar.lb import certs, stats
from foobar.lb.balancer import Balancer
from foobar.lb.settings import LbSettings
from foobar.lb.vrrp import group as vrrp_metrics
from foobar.lb.vrrp import handover
from foobar.lb.vrrp.group import VrrpGroup
from foobar.lb.workers import Workers, report_admin_port, worker_index
from foobar.process import until_stopped
from foobar.settings import HostPort

log = logging.getLogger("foobar.lb")

# How long a stopping master drains, new connections held back, before it hands its
# floating addresses over anyway: a long download must not keep new clients waiting.
HANDOVER_DRAIN = 2.0
# Between holding new connections back and draining: the HTTP core's shutdown closes at
# once a connection that has not sent its first request yet, so one accepted just before
# the hold (its TLS handshake or request on the way) is given this long to send it.
HANDOVER_SETTLE = 0.3


class LoadBalancer:
    def __init__(
        self, settings: LbSettings, workers: Workers | None = None, speaks_vrrp: bool = True
    ) -> None:
        self.registry = CollectorRegistry()
        self.workers = workers
        self.balancer = Balancer(settings, self.registry, reuse_port=settings.workers > 1)
        self.registry.register(stats.StatsCollector(self.balancer))
        self.registry.register(certs.CertificateCollector(self.balancer))
        # the first process speaks for the node; workers share its listeners' ports
        self.vrrp = (
            VrrpGroup(settings.vrrp, self.cannot_serve)
            if settings.vrrp is not None and speaks_vrrp
            else None
        )
        # without VRRP the families are declared all the same: the alerts name them
        self.registry.register(self.vrrp if self.vrrp is not None else vrrp_metrics.Declared())
        self.admin = Admin(
            self.health,
            self.status,
            self.registry,
            stats.routes(self.balancer, workers, self.vrrp.describe if self.vrrp else None),
            functools.partial(stats.change_server, self.balancer, workers),
            AdminGuard(settings.admin_secret(), settings.admin_names),
        )

    def cannot_serve(self) -> str | None:
        """Why this balancer cannot serve now (VRRP tracking), or None: a frontend whose
        listener is down, or whose backend has no usable server."""
        for frontend in self.balancer.settings.frontends:
            listener = self.balancer.listeners.get(frontend.name)
            if listener is None or not listener.listening:
                return f"frontend {frontend.name} is not listening"
            backend = self.balancer.backends.get(frontend.backend)
            if backend is None or not backend.usable():
                return f"no usable server in backend {frontend.backend}"
        return None

    async def health(self) -> tuple[bool, str]:
        backends = self.balancer.backends
        empty = [name for name, backend in backends.items() if not backend.usable()]
        if empty:
            return False, f"no usable server in backend(s) {', '.join(empty)}"
        return True, f"{len(backends)} backend(s) with usable servers"

    async def status(self) -> Mapping[str, Any]:
        snapshot = stats.snapshot(self.balancer)
        if self.vrrp is not None:
            snapshot["vrrp"] = self.vrrp.describe()
        return snapshot

    async def start(self) -> None:
        await self.balancer.start()
        if self.balancer.settings.admin is not None:
            await self.admin.start(self.balancer.settings.admin)
        if self.vrrp is not None:  # listeners first: a new master must be able to serve
            self.vrrp.start()

    async def reload(self, load: Callable[[], LbSettings]) -> bool:
        try:
            settings = load()
        except ConfigError as exc:
            for key, message in exc.problems:
                log.error("event=reload_refused key=%r reason=%r", key, message)
            return False
        if settings.vrrp != self.balancer.settings.vrrp:
            log.warning("event=reload_vrrp_unchanged reason='[lb.vrrp] changes need a restart'")
        try:
            await self.balancer.reload(settings)
        except OSError as exc:
            log.error("event=reload_failed reason=%r", str(exc))
            return False
        # a new token (or token file's content) counts from the reload on
        self.admin.guard = AdminGuard(settings.admin_secret(), settings.admin_names)
        return True

    async def stop(self) -> None:
        """Drain and stop. A VRRP master first holds back new connections to its floating
        addresses (see vrrp/handover.py), drains for at most HANDOVER_DRAIN, hands the
        addresses over (priority 0), and then finishes the drain."""
        held = self.vrrp.held_addresses() if self.vrrp is not None else []
        holding = bool(held) and handover.hold_new_connections(held)
        if holding:
            await asyncio.sleep(HANDOVER_SETTLE)
        draining = asyncio.create_task(self._drain())
        if self.vrrp is not None:
            if held:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(draining), HANDOVER_DRAIN)
            await self.vrrp.stop()
        if holding:
            handover.release()
        await draining
        await self.admin.shutdown()

    async def _drain(self) -> None:
        if self.workers is not None:
            await self.workers.stop()
        await self.balancer.stop()


def raise_open_files_limit() -> None:
    """Every connection is a descriptor; HAProxy raises its limit itself, so do we (to the
    hard limit the system allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run(settings: LbSettings, load: Callable[[], LbSettings], argv: Sequence[str]) -> int:
    raise_open_files_limit()
    index = worker_index()
    if index:  # a worker: its admin listener is the master's business, on loopback
        settings = settings.model_copy(update={"admin": HostPort("127.0.0.1", 0)})
    workers = (
        Workers(argv, settings.admin_secret()) if index == 0 and settings.workers > 1 else None
    )
    lb = LoadBalancer(settings, workers, speaks_vrrp=index == 0)
    await lb.start()
    if index:
        report_admin_port(lb.admin.server.address[1])
    elif workers is not None:
        await workers.start(settings.workers)
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        if workers is not None:
            workers.signal(signal.SIGHUP)
        task = asyncio.get_running_loop().create_task(lb.reload(load))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    await until_stopped({signal.SIGHUP: on_hup})
    log.info("event=stopping")
    await lb.stop()
    return 0
