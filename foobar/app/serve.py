"""`python -m foobar.app`: the router, the schema, the HTTP server and the admin listener."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from foobar import logs
from foobar.admin import Admin
from foobar.app import schema
from foobar.app.dbrouter import Router, error_text
from foobar.app.errors import DatabaseUnavailable, SchemaError
from foobar.app.routes import App
from foobar.app.settings import AppSettings
from foobar.http.server import Server, ServerConfig
from foobar.process import until_stopped

log = logging.getLogger("foobar.app")

# How long start-up waits for the primary to take the schema (the database may still be
# starting when the whole site comes up at once).
SCHEMA_WAIT = 60.0


class AppServer:
    """Everything one app process runs; tests start several in one process."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.router = Router(settings, self.registry)
        self.app = App(settings.name, self.router, self.registry)
        self.server = Server(
            self.app.handle,
            ServerConfig(max_body_bytes=settings.max_body_bytes),
            on_response=logs.log_access if settings.access_log else None,
            error_page=self.app.error_page,
        )
        self.admin = Admin(self.health, self.status, self.registry)

    async def health(self) -> tuple[bool, str]:
        usable, nodes = self.router.health()
        described = ", ".join(f"{name} {'up' if up else 'down'}" for name, up in nodes.items())
        return usable, described

    async def status(self) -> Mapping[str, Any]:
        return {
            "name": self.settings.name,
            "bind": str(self.settings.bind),
            "primary": self.router.primary.name if self.router.primary else None,
            "no_primary": None if self.router.primary else self.router.no_primary,
            "nodes": [node.describe() for node in self.router.nodes],
        }

    async def start(self) -> None:
        await self.router.start()
        await self.migrate()
        await self.server.start(self.settings.bind.host, self.settings.bind.port)
        if self.settings.admin is not None:
            await self.admin.start(self.settings.admin)
        host, port = self.server.address
        log.info(
            "event=listening name=%s address=%s:%d databases=%s",
            self.settings.name,
            host,
            port,
            ",".join(f"{name}={dsn}" for name, dsn in self.settings.database_nodes()),
        )

    async def migrate(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SCHEMA_WAIT
        while True:
            try:
                primary = self.router.primary
                if primary is None:
                    raise DatabaseUnavailable(self.router.no_primary, self.router.retry_after)
                async with primary.connection() as connection:
                    version = await schema.migrate(connection)
                log.info("event=schema version=%d", version)
                return
            except Exception as exc:
                if isinstance(exc, SchemaError) or loop.time() > deadline:
                    raise SchemaError(
                        f"cannot prepare the schema on the primary: {error_text(exc)}"
                    ) from exc
                log.info("event=waiting_for_primary reason=%r", error_text(exc))
                await asyncio.sleep(1.0)
                await self.router.check()

    async def stop(self) -> None:
        await self.server.shutdown()
        await self.admin.shutdown()
        await self.router.close()


async def run(settings: AppSettings) -> int:
    server = AppServer(settings)
    await server.start()
    await until_stopped()
    log.info("event=stopping name=%s", settings.name)
    await server.stop()
    return 0
