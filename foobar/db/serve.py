"""`python -m foobar.db serve`: the supervisor, its admin listener, and the signals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from foobar.admin import Admin, AdminGuard, json_response
from foobar.db.agent import Agent
from foobar.db.agent import admin_for as agent_admin
from foobar.db.errors import DbError
from foobar.db.settings import DbSettings
from foobar.db.supervisor import Supervisor
from foobar.http.server import Request, Response
from foobar.process import until_stopped

log = logging.getLogger("foobar.db")


def admin_for(supervisor: Supervisor, guard: AdminGuard) -> Admin:
    async def health() -> tuple[bool, str]:
        return supervisor.health()

    async def status() -> Mapping[str, Any]:
        return supervisor.status()

    async def promote(request: Request) -> Response:
        body = await request.body.read()
        try:
            options = json.loads(body) if body.strip() else {}
            target = options.get("to") if isinstance(options, dict) else None
        except json.JSONDecodeError:
            return json_response(400, {"error": 'body must be JSON: {"to": NAME} or {}'})
        try:
            return json_response(200, await supervisor.promote(target))
        except DbError as exc:
            log.error("event=promote_failed reason=%r", str(exc))
            return json_response(409, {"error": str(exc)})

    return Admin(health, status, supervisor.registry, {("POST", b"/promote"): promote}, guard=guard)


class Served(Protocol):
    """What `serve` runs: the single-host supervisor or one host's agent."""

    async def start(self) -> None: ...
    async def watch(self) -> None: ...
    async def stop(self) -> None: ...


async def run(settings: DbSettings) -> int:
    if settings.agent is not None:
        agent = Agent(settings)
        return await serve(
            settings,
            agent,
            agent_admin(agent, guard(settings)),
            lambda: f"agent={agent.name} epoch={agent.state.epoch} primary={agent.primary}",
        )
    supervisor = Supervisor(settings)

    def serving() -> str:
        healthy, reason = supervisor.health()
        return f"primary={supervisor.primary} healthy={healthy} reason={reason!r}"

    return await serve(settings, supervisor, admin_for(supervisor, guard(settings)), serving)


def guard(settings: DbSettings) -> AdminGuard:
    """Changes (promote, and the agents' epochs and take-overs) need the admin token."""
    return AdminGuard(settings.admin_secret(), settings.admin_names)


async def serve(
    settings: DbSettings, served: Served, admin: Admin, describe: Callable[[], str]
) -> int:
    """Start, serve the admin listener, watch until SIGTERM/SIGINT, stop cleanly."""
    await served.start()
    if settings.admin is not None:
        await admin.start(settings.admin)
    log.info("event=serving %s", describe())
    watcher = asyncio.create_task(served.watch())
    await until_stopped()
    log.info("event=stopping")
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    await admin.shutdown()
    await served.stop()
    return 0
