"""`python -m foobar.web`: static files and the proxy on one server, and the admin listener."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from foobar import logs
from foobar.admin import Admin, ResponseCounters
from foobar.http.client import PoolConfig
from foobar.http.server import Request, Response, Server, ServerConfig, error_response
from foobar.process import until_stopped
from foobar.web.proxy import UpstreamGroup
from foobar.web.settings import WebSettings
from foobar.web.static import BadTarget, StaticFiles

log = logging.getLogger("foobar.web")


class WebServer:
    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        self.name = settings.name.encode()
        self.registry = CollectorRegistry()
        self.requests = ResponseCounters("foobar_web", [], self.registry)
        self.static = StaticFiles(
            settings.root,
            settings.cache_control,
            settings.open_file_cache_valid,
            settings.add_headers,
            server_fields=[(b"X-Foobar-Web", self.name)],
        )
        self.proxy = UpstreamGroup(
            list(settings.upstreams),
            PoolConfig(
                connect_timeout=settings.proxy_connect_timeout,
                read_timeout=settings.proxy_read_timeout,
                max_idle=settings.keepalive,
            ),
            settings.max_fails,
            settings.fail_timeout,
            settings.name,
            self.registry,
        )
        self.prefixes = tuple(prefix.encode() for prefix in settings.proxy_prefixes)
        self.server = Server(
            self.handle,
            ServerConfig(
                max_body_bytes=settings.client_max_body_size,
                body_min_rate=settings.client_body_min_rate,
                max_connections=settings.worker_connections,
            ),
            on_response=logs.log_access if settings.access_log else None,
            fast_handler=self.answer_now,
        )
        self.requests.counts[()] = self.server.counts
        self.admin = Admin(self.health, self.status, self.registry)

    def answer_now(self, request: Request) -> bool:
        """The fast path (see foobar.http.server): files, and proxied requests the proxy
        can forward at once, answered without a task."""
        # a prefix is a path (settings: no "?"), so the target starts with it when its
        # path does: no split of the target for a proxied request
        target = request.target
        if target.startswith(self.prefixes):
            return self.proxy.answer_now(request)
        path = target.partition(b"?")[0]  # (`request.path`, without a property's call)
        if path == b"/healthz":
            return False
        whole_file = self.static.whole_file(request, path)
        if whole_file is not None:
            request.respond_raw(200, *whole_file)
        else:
            request.respond(self.file(request))
        return True

    async def handle(self, request: Request) -> Response:
        path = request.path
        if path.startswith(self.prefixes):
            return await self.proxy.handle(request)
        if path == b"/healthz":
            healthy, reason = await self.health()
            response = Response(
                200 if healthy else 503, [(b"Content-Type", b"text/plain")], f"{reason}\n".encode()
            )
            response.headers.append((b"X-Foobar-Web", self.name))
            return response
        return self.file(request)

    def file(self, request: Request) -> Response:
        """A file's answer (its fields include X-Foobar-Web), or the error, with it too."""
        if request.method not in ("GET", "HEAD"):
            response = error_response(405)
            response.headers.append((b"Allow", b"GET, HEAD"))
        else:
            try:
                found = self.static.serve(request)
            except BadTarget as exc:
                response = error_response(400, str(exc))
            else:
                if found is not None:
                    return found
                response = error_response(404)
        response.headers.append((b"X-Foobar-Web", self.name))
        return response

    async def health(self) -> tuple[bool, str]:
        usable = self.proxy.usable()
        total = len(self.proxy.upstreams)
        if total and not usable:
            return False, f"none of {total} upstreams usable"
        return True, f"{len(usable)} of {total} upstreams usable"

    async def status(self) -> Mapping[str, Any]:
        return {
            "name": self.settings.name,
            "root": str(self.settings.root),
            "upstreams": [
                {
                    "address": upstream.label,
                    "usable": upstream in self.proxy.usable(),
                    "idle_connections": upstream.pool.idle_count,
                    "active_connections": upstream.pool.active_count,
                }
                for upstream in self.proxy.upstreams
            ],
        }

    async def start(self) -> None:
        await self.server.start(self.settings.bind.host, self.settings.bind.port)
        if self.settings.admin is not None:
            await self.admin.start(self.settings.admin)
        host, port = self.server.address
        log.info(
            "event=listening name=%s address=%s:%d root=%s upstreams=%s",
            self.settings.name,
            host,
            port,
            self.settings.root,
            ",".join(u.label for u in self.proxy.upstreams),
        )

    async def stop(self) -> None:
        await self.server.shutdown()
        await self.admin.shutdown()
        await self.proxy.close()
        self.static.close()


async def run(settings: WebSettings) -> int:
    server = WebServer(settings)
    await server.start()
    await until_stopped()
    log.info("event=stopping name=%s", settings.name)
    await server.stop()
    return 0
