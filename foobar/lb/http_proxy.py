"""HTTP mode: a server is picked per request; client-side and server-side keep-alive are
separate (server connections are pooled per server); X-Forwarded-For is appended,
X-Forwarded-Proto set, X-Foobar-LB added to responses, and nothing else changed but the
hop-by-hop headers, which belong to each connection.

Retries, as HAProxy's `retries` + `option redispatch`: a connection failure (nothing was
sent) is retried, on another server when there is one; an idempotent request without a
body that got no response byte is retried once elsewhere; anything else that reached a
server is never sent again. A request smuggled with conflicting framing never gets here:
the core refuses it with 400 before a backend is chosen.

Two paths, one set of rules. A request without a body takes the fast path when it can
(`answer_now`): a server with a free slot, an idle pooled connection, and an answer small
enough to arrive whole are handled in the protocols' callbacks, without a task. Whatever
has to wait (the queue, a new connection, a long or failed answer) goes on in `forward()`,
the task path, from the point the fast path reached.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING

from foobar.http import headers as hdrs
from foobar.http.client import IDEMPOTENT, UpstreamConnection, relay_body, whole_body
from foobar.http.errors import UpstreamConnectError, UpstreamError
from foobar.http.parser import ResponseHead
from foobar.http.server import Request, Response
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

    # the fast path

    def answer_now(self, request: Request) -> bool:
        """The core's fast handler (a request without a body, its connection idle):
        forward it at once on an idle pooled connection and answer from the upstream's
        callback. False leaves it to `handle()`: no free slot, or no server."""
        if self.settings.redirect_https_port is not None:
            request.respond(self.redirect(request))
            return True
        backend = self.balancer.backends[self.settings.backend]
        sticky = self.sticky_server(backend, request)
        if sticky is not None:
            backend.take(sticky)
        server = sticky or backend.take_now(request)
        if server is None:
            return False
        head = request.head
        headers = hdrs.forwarding(head.headers, request.client[0], request.scheme)
        started = time.monotonic()
        server.pool.send_now(
            head.method,
            head.target,
            headers,
            lambda reply, body: self.answer_arrived(
                request, backend, sticky, server, reply, body, started
            ),
            lambda sent: request.continue_in_task(
                lambda request: self.forward(
                    request, backend, headers, sticky, server, sent, started
                )
            ),
        )
        return True

    def answer_arrived(
        self,
        request: Request,
        backend: Backend,
        sticky: Server | None,
        server: Server,
        head: ResponseHead,
        body: bytes,
        started: float,
    ) -> None:
        """The whole answer to a fast-path request arrived: relay it from the callback."""
        backend.release(server)
        self.answered(request, backend, server, head.status, started)
        body, framing = whole_body(head, body)
        request.respond(self.relay(backend, server, sticky, head, body, framing))

    # the task path

    async def handle(self, request: Request) -> Response:
        if self.settings.redirect_https_port is not None:
            return self.redirect(request)
        backend = self.balancer.backends[self.settings.backend]  # looked up per request: reloads
        head = request.head
        headers = hdrs.forwarding(head.headers, request.client[0], request.scheme)
        return await self.forward(request, backend, headers, self.sticky_server(backend, request))

    async def forward(
        self,
        request: Request,
        backend: Backend,
        headers: hdrs.Headers,
        sticky: Server | None,
        server: Server | None = None,
        sent: UpstreamConnection | None = None,
        sent_at: float = 0.0,
    ) -> Response:
        """Pick a server, send, retry by the rules above, relay the answer. The fast path
        joins with the `server` it took a slot on and, if it got that far, the connection
        the request was `sent` on and when (`sent_at`)."""
        head = request.head
        attempt = 0
        retried_answer = False
        avoid: Server | None = None
        while True:
            if server is None:
                try:
                    if sticky is not None and avoid is None:
                        server = sticky
                        backend.take(server)
                    else:
                        server = await backend.acquire(
                            request, avoid if backend.settings.redispatch else None
                        )
                except NoServer as exc:
                    log.info("event=no_server frontend=%s reason=%r", self.settings.name, str(exc))
                    return self.error(503)
            try:
                started = sent_at if sent is not None else time.monotonic()
                connection, sent = sent, None  # a retry sends afresh
                response = await server.pool.request(
                    head.method,
                    head.target,
                    headers,
                    request.body if head.has_body else None,
                    head.content_length,
                    sent=connection,
                )
            except UpstreamConnectError as exc:  # nothing reached the server
                if backend.connect_failed(server, attempt, str(exc)):
                    attempt += 1
                    avoid, server = server, None
                    continue
                return self.error(503)
            except UpstreamError as exc:
                backend.release(server)
                backend.failed(server, "response")
                safe = head.method in IDEMPOTENT and not head.has_body and not exc.response_started
                if safe and not retried_answer:
                    retried_answer = True
                    server.counters.redispatches += 1
                    avoid, server = server, None
                    continue
                log.warning("event=server_failed server=%s reason=%r", server.name, str(exc))
                return self.error(exc.status)
            except BaseException:  # cancelled: the client left
                backend.release(server)
                raise
            self.answered(request, backend, server, response.status, started)
            body, framing = relay_body(response, functools.partial(backend.release, server))
            return self.relay(backend, server, sticky, response.head, body, framing)

    # what both paths share

    def answered(
        self, request: Request, backend: Backend, server: Server, status: int, started: float
    ) -> None:
        """Count a response and tell the passive checks about it."""
        server.counters.requests += 1
        if status >= 500:
            backend.failed(server, "response")
        else:
            backend.succeeded(server)
        request.upstream["ua"] = server.settings.address  # formatted only if logged
        request.upstream["urt"] = time.monotonic() - started

    def relay(
        self,
        backend: Backend,
        server: Server,
        sticky: Server | None,
        head: ResponseHead,
        body: bytes | AsyncIterable[bytes],
        framing: hdrs.Headers,
    ) -> Response:
        headers = hdrs.end_to_end(head.headers)
        cookie = backend.settings.cookie
        if cookie is not None and sticky is not server:
            headers.append((b"Set-Cookie", f"{cookie}={server.name}; Path=/; HttpOnly".encode()))
        headers += framing
        return self.finish(Response(head.status, headers, body, head.reason))

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
