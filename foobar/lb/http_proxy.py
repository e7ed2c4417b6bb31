"""HTTP mode: a server is picked per request; client-side and server-side keep-alive are
separate (server connections are pooled per server); X-Forwarded-For is appended,
X-Forwarded-Proto set, X-Foobar-LB added to responses, and nothing else changed but the
hop-by-hop headers, which belong to each connection.

The forwarding itself (the fast path, the hand-over to a task, attempts, relaying) is
foobar.http.forward's; this module is HAProxy's rules for it, as a `Route`:
- the server: the backend's algorithm, its slots (`maxconn`) and queue, the sticky
  cookie (`cookie SRV insert`);
- retries, as `retries` + `option redispatch`: a failed attempt is tried again while
  `retries` allows, on another server when there is one; the engine decides which
  failures may be retried at all (a connect failure always; once the request reached a
  server, only an idempotent, bodiless, unanswered one), and this route sends such a
  request again once at most;
- passive checks: connection failures and 5xx answers count against a server;
- the answer: X-Foobar-LB, Strict-Transport-Security on TLS frontends, the cookie.
A request smuggled with conflicting framing never gets here: the core refuses it with
400 before a backend is chosen.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from foobar.http import headers as hdrs
from foobar.http.forward import CONNECT, Forwarder, ProxyExchange
from foobar.http.server import FastHandler, Request, Response
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

# A request's plan: the backend it was sent to (reloads swap backends, its slots must go
# back to the one they came from) and the server its sticky cookie names, if usable.
Plan = tuple[Backend, Server | None]


class HttpFrontend:
    """One HTTP frontend: the core's handlers, and HAProxy's rules as the engine's route."""

    replaced_fields = frozenset[bytes]()

    def __init__(self, settings: FrontendSettings, balancer: Balancer) -> None:
        self.balancer = balancer
        self.name = balancer.settings.name.encode()
        self.forwarder = Forwarder(self)
        self.configure(settings)

    def configure(self, settings: FrontendSettings) -> None:
        """At start and on reload (after the backends are installed): the backend, and the
        fields added to every answer, are looked up and made here."""
        self.settings = settings
        self.backend = self.balancer.backends[settings.backend]
        self._plan_without_cookie: Plan = (self.backend, None)
        fields = [(b"X-Foobar-LB", self.name)]
        if settings.hsts_max_age is not None and settings.tls_cert is not None:
            fields.append((b"Strict-Transport-Security", b"max-age=%d" % settings.hsts_max_age))
        self._added = fields
        self._added_lines = b"".join(b"%s: %s\r\n" % field for field in fields)

    # the core's handlers

    @property
    def fast_handler(self) -> FastHandler:
        """The core's fast handler (see foobar.http.forward) for the frontend as it is
        configured: the engine's own while it forwards, saving a call per request."""
        if self.settings.redirect_https_port is not None:
            return self.redirect_now
        return self.forwarder.answer_now

    def redirect_now(self, request: Request) -> bool:
        request.respond(self.redirect(request))
        return True

    async def handle(self, request: Request) -> Response:
        if self.settings.redirect_https_port is not None:
            return self.redirect(request)
        return await self.forwarder.handle(request)

    # the route

    def plan(self, exchange: ProxyExchange[Server]) -> Plan:
        """The request's plan, made when its first server is picked; every later hook
        reads `exchange.plan` as it is."""
        plan = exchange.plan
        if plan is None:
            backend = self.backend
            plan = exchange.plan = (backend, self.sticky_server(backend, exchange.request))
        return plan  # type: ignore[return-value]

    def pick_now(self, exchange: ProxyExchange[Server]) -> Server | None:
        backend = self.backend
        if backend.settings.cookie is None:
            exchange.plan = self._plan_without_cookie
        else:
            sticky = self.sticky_server(backend, exchange.request)
            exchange.plan = (backend, sticky)
            if sticky is not None:
                backend.take(sticky)
                return sticky
        return backend.take_now(exchange.request, exchange.started)

    async def pick(self, exchange: ProxyExchange[Server]) -> Server:
        backend, sticky = self.plan(exchange)
        if sticky is not None and exchange.attempt == 0:
            backend.take(sticky)
            return sticky
        avoid = exchange.failed if backend.settings.redispatch else None
        try:
            return await backend.acquire(exchange.request, avoid)
        except NoServer as exc:
            log.info("event=no_server frontend=%s reason=%r", self.settings.name, str(exc))
            raise

    def may_retry(self, exchange: ProxyExchange[Server], kind: str) -> bool:
        plan: Plan = exchange.plan  # type: ignore[assignment]
        backend = plan[0]
        server = exchange.failed
        assert server is not None
        if exchange.attempt > backend.settings.retries or exchange.replays:
            return False  # a request that reached a server is sent again once at most
        if kind == CONNECT:
            server.counters.retries += 1
        else:
            server.counters.redispatches += 1
        return True

    def failed(
        self, exchange: ProxyExchange[Server], server: Server, kind: str, reason: str
    ) -> None:
        plan: Plan = exchange.plan  # type: ignore[assignment]
        backend = plan[0]
        backend.failed(server, "connect" if kind == CONNECT else "response")
        log.warning(
            "event=server_failed backend=%s server=%s kind=%s reason=%r",
            backend.name,
            server.name,
            kind,
            reason,
        )

    def answered(
        self, exchange: ProxyExchange[Server], server: Server, status: int, seconds: float
    ) -> bytes:
        plan: Plan = exchange.plan  # type: ignore[assignment]
        backend, sticky = plan
        server.counters.requests += 1
        if status >= 500:
            backend.failed(server, "response")
        elif server.consecutive_errors:
            backend.succeeded(server)
        cookie = backend.settings.cookie
        if cookie is None or sticky is server:
            return self._added_lines
        return b"Set-Cookie: %s=%s; Path=/; HttpOnly\r\n%s" % (
            cookie.encode(),
            server.name.encode(),
            self._added_lines,
        )

    def release(self, exchange: ProxyExchange[Server], server: Server) -> None:
        plan: Plan = exchange.plan  # type: ignore[assignment]
        plan[0].release(server)

    def request_fields(self, request: Request) -> bytes:
        return b""

    def error(self, status: int, detail: str) -> Response:
        return self.finish(
            Response(
                status,
                [(b"Content-Type", b"text/plain"), (b"Cache-Control", b"no-cache")],
                ERROR_TEXT.get(status, b"%d\n" % status),
            )
        )

    # the balancer's own answers

    def finish(self, response: Response) -> Response:
        response.headers += self._added
        return response

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
        host = (request.host or b"").decode("latin-1")
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
