"""`python -m foobar.db serve`: the supervisor, its admin listener, and the signals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from foobar.admin import Admin, AdminGuard, json_response
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


async def run(settings: DbSettings) -> int:
    supervisor = Supervisor(settings)
    await supervisor.start()
    admin = admin_for(supervisor, AdminGuard(settings.admin_secret(), settings.admin_names))
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
