"""HTTP mode: a server is picked per request; client-side and server-side keep-alive are
separate (server connections are pooled per server); X-Forwarded-For is appended,
X-Forwarded-Proto set, X-Foobar-LB added to responses, and nothing else changed but the
hop-by-hop headers, which belong to each connection.

Retries, as HAProxy's `retries` + `option redispatch`: a connection failure (nothing was
sent) is retried, on another server when there is one; an idempotent request without a
body that got no response byte is retried once elsewhere; anything else that reached a
server is never sent again. A request smuggled with conflicting framing never gets here:
the core refuses it with 400 before a backend is chosen.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from foobar.http import headers as hdrs
from foobar.http.client import IDEMPOTENT, UpstreamResponse, relay_body
from foobar.http.errors import UpstreamConnectError, UpstreamError
from foobar.http.server import Request, Response
from foobar.lb.algorithms import RequestInfo
from foobar.lb.servers import Backend, NoServer, Server
from foobar.lb.settings import FrontendSettings

if TYPE_CHECKING:
    from foobar.lb.balancer import Balancer

log = logging.getLogger("foobar.lb.http")

ERROR_TEXT = {
    502: b"502 Bad Gateway\nThe server returned an invalid or incomplete response.\n",
    503: b"503 Service Unavailable\nNo server is available to handle this request.\n",
    504: b"504 Gateway Time-out\nThe server didn't respond in time.\n",
}


class HttpFrontend:
    def __init__(self, settings: FrontendSettings, balancer: Balancer) -> None:
        self.settings = settings
        self.balancer = balancer
        self.name = balancer.settings.name.encode()

    def error(self, status: int) -> Response:
        return self.finish(
            Response(
                status,
                [(b"Content-Type", b"text/plain"), (b"Cache-Control", b"no-cache")],
                ERROR_TEXT.get(status, b"%d\n" % status),
            )
        )

    def finish(self, response: Response) -> Response:
        response.headers.append((b"X-Foobar-LB", self.name))
        if self.settings.hsts_max_age is not None and self.settings.tls_cert is not None:
            response.headers.append(
                (b"Strict-Transport-Security", b"max-age=%d" % self.settings.hsts_max_age)
            )
        return response

    async def handle(self, request: Request) -> Response:
        if self.settings.redirect_https_port is not None:
            return self.redirect(request)
        backend = self.balancer.backends[self.settings.backend]  # looked up per request: reloads
        head = request.head
        info = RequestInfo(request.client[0], request.path, request.header)
        headers = hdrs.forwarding(head.headers, request.client[0], request.scheme)
        sticky = self.sticky_server(backend, request)
        attempt = 0
        retried_answer = False
        avoid: Server | None = None
        while True:
            try:
                if sticky is not None and avoid is None:
                    server = sticky
                    backend.take(server)
                else:
                    server = await backend.acquire(
                        info, avoid if backend.settings.redispatch else None
                    )
            except NoServer as exc:
                log.info("event=no_server frontend=%s reason=%r", self.settings.name, str(exc))
                return self.error(503)
            started = time.monotonic()
            try:
                response = await server.pool.request(
                    head.method,
                    head.target,
                    headers,
                    request.body if head.has_body else None,
                    head.content_length,
                )
            except UpstreamConnectError as exc:  # nothing reached the server
                if backend.connect_failed(server, attempt, str(exc)):
                    attempt += 1
                    avoid = server
                    continue
                return self.error(503)
            except UpstreamError as exc:
                backend.release(server)
                backend.failed(server, "response")
                safe = head.method in IDEMPOTENT and not head.has_body and not exc.response_started
                if safe and not retried_answer:
                    retried_answer = True
                    server.counters.redispatches += 1
                    avoid = server
                    continue
                log.warning("event=server_failed server=%s reason=%r", server.name, str(exc))
                return self.error(exc.status)
            server.counters.requests += 1
            if response.status >= 500:
                backend.failed(server, "response")
            else:
                backend.succeeded(server)
            request.upstream["ua"] = server.settings.address  # formatted only if logged
            request.upstream["urt"] = time.monotonic() - started
            return self.relay(backend, server, sticky, response)

    def relay(
        self, backend: Backend, server: Server, sticky: Server | None, response: UpstreamResponse
    ) -> Response:
        headers = hdrs.end_to_end(response.headers)
        cookie = backend.settings.cookie
        if cookie is not None and sticky is not server:
            headers.append((b"Set-Cookie", f"{cookie}={server.name}; Path=/; HttpOnly".encode()))
        body, framing = relay_body(response, lambda: backend.release(server))
        headers += framing
        return self.finish(Response(response.status, headers, body, response.head.reason))

    def sticky_server(self, backend: Backend, request: Request) -> Server | None:
        """`cookie NAME insert`: the server the client's cookie names, while usable."""
        name = backend.settings.cookie
        if name is None:
            return None
        for value in hdrs.get_all(request.headers, b"cookie"):
            for part in value.split(b";"):
                key, _, server_name = part.strip().partition(b"=")
                if key.decode("latin-1") == name:
                    server = backend.server(server_name.decode("latin-1"))
                    if (
                        server is not None
                        and server.up
                        and server.state != "maint"
                        and server.has_slot
                    ):
                        return server
        return None

    def redirect(self, request: Request) -> Response:
        """The plain-HTTP listener's only answer: the same URL on HTTPS. 301 for GET/HEAD,
        308 for other methods, which must not become GETs."""
        host = (request.header(b"host") or b"").decode("latin-1")
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        port = self.settings.redirect_https_port
        authority = hostname if port == 443 else f"{hostname}:{port}"
        location = f"https://{authority}{request.target.decode('latin-1')}".encode()
        status = 301 if request.method in ("GET", "HEAD") else 308
        return self.finish(
            Response(
                status,
                [(b"Location", location), (b"Content-Type", b"text/plain")],
                b"moved to HTTPS\n",
            )
        )
