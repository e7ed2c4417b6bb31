"""Serves the status page: the files in page/ and `GET /api/site`, the collector's
snapshot as JSON. Read-only: no form, no action, nothing a visitor can change. `run` is
the page on its own (`python -m foobar.statuspage`); `foobar up` starts a StatusPage itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from importlib import resources
from typing import Any

from prometheus_client import CollectorRegistry

from foobar import logs
from foobar.admin import Admin
from foobar.http.server import OnResponse, Request, Response, Server, error_response
from foobar.process import until_stopped
from foobar.settings import HostPort
from foobar.statuspage.collector import Collector, Target
from foobar.statuspage.settings import StatusPageSettings

log = logging.getLogger("foobar.statuspage")

FILES = {
    b"/": ("index.html", b"text/html; charset=utf-8"),
    b"/status.js": ("status.js", b"text/javascript; charset=utf-8"),
    b"/status.css": ("status.css", b"text/css; charset=utf-8"),
}


class StatusPage:
    def __init__(self, collector: Collector, on_response: OnResponse | None = None) -> None:
        self.collector = collector
        page = resources.files("foobar.statuspage") / "page"
        # read once: a few kilobytes, and the page cannot change under a running site
        self.files = {
            path: (page.joinpath(name).read_bytes(), kind) for path, (name, kind) in FILES.items()
        }
        self.server = Server(self.handle, on_response=on_response)
        self._polling: asyncio.Task[None] | None = None

    async def start(self, address: HostPort) -> None:
        await self.collector.poll_all()  # the first view already has every node
        self._polling = asyncio.create_task(self.collector.run())
        await self.server.start(address.host, address.port)
        log.info("event=status_page_listening address=%s", address)

    async def stop(self) -> None:
        if self._polling is not None:
            self._polling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._polling
        await self.server.shutdown(drain_timeout=1.0)
        await self.collector.close()

    async def handle(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            response = error_response(405)
            response.headers.append((b"Allow", b"GET, HEAD"))
            return response
        if request.path == b"/api/site":
            body = json.dumps(self.collector.snapshot()).encode()
            return Response(
                200,
                [(b"Content-Type", b"application/json"), (b"Cache-Control", b"no-store")],
                body,
            )
        if request.path in self.files:
            body, kind = self.files[request.path]
            return Response(200, [(b"Content-Type", kind)], body)
        return error_response(404)


async def run(settings: StatusPageSettings) -> int:
    targets = [
        Target(target.role, target.name, target.address or str(target.admin), target.admin)
        for target in settings.targets
    ]
    page = StatusPage(
        Collector(targets, settings.interval),
        on_response=logs.log_access if settings.access_log else None,
    )

    async def health() -> tuple[bool, str]:
        return True, f"polling {len(targets)} target(s)"

    async def status() -> Mapping[str, Any]:
        return {"targets": [f"{t.role} {t.name} {t.admin}" for t in targets]}

    admin = Admin(health, status, CollectorRegistry())
    await page.start(settings.bind)
    if settings.admin is not None:
        await admin.start(settings.admin)
    await until_stopped()
    log.info("event=stopping")
    await page.stop()
    await admin.shutdown()
    return 0
