"""`python -m foobar.lb`: the balancer, its admin listener and stats, and the signals:
SIGHUP reloads the settings (a broken file is refused, the old settings keep running),
SIGTERM and SIGINT drain and stop."""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from foobar.admin import Admin, AdminGuard
from foobar.errors import ConfigError
from foobar.lb import stats
from foobar.lb.balancer import Balancer
from foobar.lb.settings import LbSettings
from foobar.lb.workers import Workers, report_admin_port, worker_index
from foobar.process import until_stopped
from foobar.settings import HostPort

log = logging.getLogger("foobar.lb")


class LoadBalancer:
    def __init__(self, settings: LbSettings, workers: Workers | None = None) -> None:
        self.registry = CollectorRegistry()
        self.workers = workers
        self.balancer = Balancer(settings, self.registry, reuse_port=settings.workers > 1)
        self.registry.register(stats.StatsCollector(self.balancer))
        self.admin = Admin(
            self.health,
            self.status,
            self.registry,
            stats.routes(self.balancer, workers),
            functools.partial(stats.change_server, self.balancer, workers),
            AdminGuard(settings.admin_secret(), settings.admin_names),
        )

    async def health(self) -> tuple[bool, str]:
        backends = self.balancer.backends
        empty = [name for name, backend in backends.items() if not backend.usable()]
        if empty:
            return False, f"no usable server in backend(s) {', '.join(empty)}"
        return True, f"{len(backends)} backend(s) with usable servers"

    async def status(self) -> Mapping[str, Any]:
        return stats.snapshot(self.balancer)

    async def start(self) -> None:
        await self.balancer.start()
        if self.balancer.settings.admin is not None:
            await self.admin.start(self.balancer.settings.admin)

    async def reload(self, load: Callable[[], LbSettings]) -> bool:
        try:
            settings = load()
        except ConfigError as exc:
            for key, message in exc.problems:
                log.error("event=reload_refused key=%r reason=%r", key, message)
            return False
        try:
            await self.balancer.reload(settings)
        except OSError as exc:
            log.error("event=reload_failed reason=%r", str(exc))
            return False
        # a new token (or token file's content) counts from the reload on
        self.admin.guard = AdminGuard(settings.admin_secret(), settings.admin_names)
        return True

    async def stop(self) -> None:
        if self.workers is not None:
            await self.workers.stop()
        await self.balancer.stop()
        await self.admin.shutdown()


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
    lb = LoadBalancer(settings, workers)
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
