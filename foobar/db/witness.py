"""`python -m foobar.db witness`: the third vote of a two-server database cluster.

Two agents alone cannot tell "the other is dead" from "I am cut off"; the witness, on a
third host (server 1), can. It keeps its own durable copy of the epoch, checks every
`check_interval` whether each database server greets it, and gives its vote through
`POST /epoch` by the rule in `participant.py`. It stores no data and never talks SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from foobar.admin import Admin, AdminGuard
from foobar.db.epoch import EpochFile
from foobar.db.participant import Participant
from foobar.db.peers import greets
from foobar.db.settings import WitnessSettings
from foobar.process import until_stopped

log = logging.getLogger("foobar.db.witness")


class Witness:
    def __init__(self, settings: WitnessSettings) -> None:
        self.settings = settings
        self.participant = Participant(
            "witness",
            settings.cluster_name,
            EpochFile(settings.state_dir / "epoch.json"),
            list(settings.instances),
            settings.failover_after,
        )
        self.registry = CollectorRegistry()
        epoch = Gauge("foobar_db_epoch", "the epoch this participant holds", registry=self.registry)
        epoch.set_function(lambda: self.participant.state.epoch)
        degraded = Gauge(
            "foobar_db_semisync_degraded",
            "1 while the majority has let the primary replicate asynchronously",
            registry=self.registry,
        )
        degraded.set_function(lambda: self.participant.state.degraded)
        # the agents' epoch changes carry the admin token the participants share
        guard = AdminGuard(settings.admin_secret(), settings.admin_names)
        self.admin = Admin(
            self.health, self.status, self.registry, self.participant.routes(True), guard=guard
        )

    async def health(self) -> tuple[bool, str]:
        silent = [
            name
            for name in self.settings.instances
            if self.participant.unseen(name) >= self.settings.failover_after
        ]
        if silent:
            return False, f"silent: {', '.join(silent)}"
        return True, f"epoch {self.participant.state.epoch}, every server greets"

    async def status(self) -> Mapping[str, Any]:
        return self.participant.view()

    async def check(self) -> None:
        names = list(self.settings.instances)
        alive = await asyncio.gather(*(greets(*self.settings.instances[name]) for name in names))
        for name, up in zip(names, alive, strict=True):
            if not up and self.participant.unseen(name) < self.settings.check_interval * 1.5:
                log.warning("event=silent instance=%s", name)
            self.participant.saw(name, up)

    async def watch(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.settings.check_interval)


async def run(settings: WitnessSettings) -> int:
    witness = Witness(settings)
    assert settings.admin is not None
    await witness.admin.start(settings.admin)
    state = witness.participant.state
    log.info("event=serving role=witness epoch=%d primary=%s", state.epoch, state.primary)
    watcher = asyncio.create_task(witness.watch())
    await until_stopped()
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    await witness.admin.shutdown()
    return 0
