"""`python -m foobar.db serve`: the supervisor, its admin listener, and the signals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from foobar.admin import Admin, json_response
from foobar.db.agent import Agent
from foobar.db.agent import admin_for as agent_admin
from foobar.db.errors import DbError
from foobar.db.settings import DbSettings
from foobar.db.supervisor import Supervisor
from foobar.http.server import Request, Response
from foobar.process import until_stopped

log = logging.getLogger("foobar.db")


def admin_for(supervisor: Supervisor) -> Admin:
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

    return Admin(health, status, supervisor.registry, {("POST", b"/promote"): promote})


async def run(settings: DbSettings) -> int:
    if settings.agent is not None:
        return await run_agent(settings)
    supervisor = Supervisor(settings)
    await supervisor.start()
    admin = admin_for(supervisor)
    if settings.admin is not None:
        await admin.start(settings.admin)
    healthy, reason = supervisor.health()
    log.info("event=serving primary=%s healthy=%s reason=%r", supervisor.primary, healthy, reason)
    watcher = asyncio.create_task(supervisor.watch())
    await until_stopped()
    log.info("event=stopping")
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    await admin.shutdown()
    await supervisor.stop()
    return 0


async def run_agent(settings: DbSettings) -> int:
    agent = Agent(settings)
    await agent.start()
    admin = agent_admin(agent)
    if settings.admin is not None:
        await admin.start(settings.admin)
    state = agent.state
    log.info("event=serving agent=%s epoch=%d primary=%s", agent.name, state.epoch, agent.primary)
    watcher = asyncio.create_task(agent.watch())
    await until_stopped()
    log.info("event=stopping")
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    await admin.shutdown()
    await agent.stop()
    return 0
