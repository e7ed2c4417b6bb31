"""The balancer: frontends (listeners) sending to backends (servers), built from the
settings, and rebuilt from new settings on SIGHUP without closing a listening socket or a
connection in flight.

On reload, backends are built anew (a server keeping its name and address keeps its
health and counters), frontends look their backend up per request, so new requests use
the new set at once while requests in flight finish on the old one; a listener whose
address, mode and TLS files are unchanged is kept as it is, others are opened or closed.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from foobar import logs
from foobar.admin import ResponseCounters
from foobar.http.listener import Listener as HttpListener
from foobar.http.server import OnResponse, ResponseCounts, Server, ServerConfig
from foobar.lb.health import HealthChecks
from foobar.lb.http_proxy import HttpFrontend
from foobar.lb.servers import Backend
from foobar.lb.settings import FrontendSettings, LbSettings
from foobar.lb.tcp_proxy import TcpFrontend

log = logging.getLogger("foobar.lb")

# An HTTP frontend passes bodies through: the backend decides what is too large.
MAX_BODY_BYTES = 1 << 40


# Mozilla's "intermediate" profile (ssl-config.mozilla.org, v5.7) for TLS 1.2: forward
# secrecy (ECDHE) and AEAD ciphers (AES-GCM, ChaCha20-Poly1305) only. No CBC suite, so no
# padding oracle (LUCKY13); no DHE, whose parameters clients cannot check. TLS 1.3's own
# suites are all AEAD and left as OpenSSL orders them.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)


def tls_context(frontend: FrontendSettings) -> ssl.SSLContext | None:
    """Mozilla's intermediate profile: TLS 1.2 and 1.3 only, TLS12_CIPHERS, the client's
    order of preference (all the suites are strong, and it knows whether it has AES in
    hardware), HTTP/1.1 ALPN."""
    if frontend.tls_cert is None or frontend.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(frontend.tls_cert, frontend.tls_key)
    context.set_alpn_protocols(["http/1.1"])
    return context


@dataclass
class Listener:
    settings: FrontendSettings
    http: HttpFrontend | None = None
    server: Server | None = None
    tcp: TcpFrontend | None = None

    def same_socket(self, other: FrontendSettings) -> bool:
        mine = self.settings
        return (mine.bind, mine.mode, mine.tls_cert, mine.tls_key, mine.accept_proxy) == (
            other.bind,
            other.mode,
            other.tls_cert,
            other.tls_key,
            other.accept_proxy,
        )

    @property
    def listening(self) -> bool:
        """Whether new connections are accepted (what VRRP tracking asks)."""
        if self.server is not None and self.server.state.closing:
            return False
        accepting = self.accepting
        return accepting is not None and accepting.sock is not None

    @property
    def connections(self) -> int:
        if self.server is not None:
            return len(self.server.state.connections)
        return len(self.tcp.sessions) if self.tcp is not None else 0

    @property
    def accepting(self) -> HttpListener | None:
        """The listening socket, with its connection limit."""
        if self.server is not None:
            return self.server.listener
        return self.tcp.listener if self.tcp is not None else None


class Balancer:
    def __init__(
        self, settings: LbSettings, registry: CollectorRegistry, reuse_port: bool = False
    ) -> None:
        self.settings = settings
        self.reuse_port = reuse_port  # several worker processes share the ports
        self.registry = registry
        self.started = time.time()
        self.backends: dict[str, Backend] = {}
        self.checks: dict[str, HealthChecks] = {}
        self.listeners: dict[str, Listener] = {}
        # what the last install replaced, stopped by reload()
        self._retired: tuple[dict[str, Backend], dict[str, HealthChecks]] = ({}, {})
        self.requests = ResponseCounters("foobar_lb", ["frontend"], registry)

    async def start(self) -> None:
        self._install_backends(self.settings)
        for frontend in self.settings.frontends:
            self.listeners[frontend.name] = await self._open(frontend)

    async def _open(self, frontend: FrontendSettings) -> Listener:
        context = tls_context(frontend)
        listener = Listener(frontend)
        if frontend.mode == "tcp":
            listener.tcp = TcpFrontend(frontend, self)
            await listener.tcp.start(context, self.reuse_port)
        else:
            listener.http = HttpFrontend(frontend, self)
            listener.server = Server(
                listener.http.handle,
                ServerConfig(
                    max_body_bytes=MAX_BODY_BYTES,
                    request_timeout=frontend.timeout_http_request,
                    keepalive_timeout=frontend.timeout_http_keep_alive,
                    body_timeout=frontend.timeout_client,
                    body_min_rate=frontend.body_min_rate,
                    send_timeout=frontend.timeout_client,
                    accept_proxy=frontend.accept_proxy,
                    max_connections=frontend.maxconn,
                ),
                on_response=self._access_log(self.settings),
                fast_handler=listener.http.fast_handler,
                # a listener reopened by a reload counts on
                counts=self.requests.counts.setdefault((frontend.name,), ResponseCounts()),
            )
            await listener.server.start(
                frontend.bind.host, frontend.bind.port, ssl=context, reuse_port=self.reuse_port
            )
        log.info(
            "event=listening frontend=%s bind=%s mode=%s tls=%s",
            frontend.name,
            frontend.bind,
            frontend.mode,
            context is not None,
        )
        return listener

    @staticmethod
    def _access_log(settings: LbSettings) -> OnResponse | None:
        return logs.log_access if settings.access_log else None

    def _install_backends(self, settings: LbSettings) -> dict[str, Backend]:
        """Build the backends of `settings`, carrying over what is known of servers that
        stay; start their checks; return the ones replaced."""
        fresh = {backend.name: Backend(backend) for backend in settings.backends}
        for name, backend in fresh.items():
            old = self.backends.get(name)
            if old is None:
                continue
            for server in backend.servers:
                before = old.server(server.name)
                if before is not None and before.settings.address == server.settings.address:
                    server.up, server.check_status = before.up, before.check_status
                    server.last_change, server.counters = before.last_change, before.counters
        replaced, self.backends = self.backends, fresh
        old_checks, self.checks = self.checks, {}
        for name, backend in fresh.items():
            self.checks[name] = HealthChecks(backend)
            self.checks[name].start()
        self._retired = (replaced, old_checks)
        return replaced

    async def reload(self, settings: LbSettings) -> None:
        replaced = self._install_backends(settings)
        self.settings = settings  # listeners opened below log as the new settings say
        _, old_checks = self._retired
        for checks in old_checks.values():
            await checks.stop()
        keep = {}
        for frontend in settings.frontends:
            listener = self.listeners.pop(frontend.name, None)
            if listener is not None and listener.same_socket(frontend):
                listener.settings = frontend
                if listener.http is not None and listener.server is not None:
                    listener.http.configure(frontend)
                    listener.server.fast_handler = listener.http.fast_handler
                    listener.server.on_response = self._access_log(settings)
                keep[frontend.name] = listener
            else:
                if listener is not None:
                    await self._close(listener)
                keep[frontend.name] = await self._open(frontend)
        for listener in self.listeners.values():
            await self._close(listener)
        self.listeners = keep
        for backend in replaced.values():
            await backend.close()  # idle server connections now; busy ones when they finish
        log.info("event=reloaded frontends=%d backends=%d", len(keep), len(self.backends))

    async def _close(self, listener: Listener, drain_timeout: float = 0.0) -> None:
        if listener.server is not None:
            await listener.server.shutdown(drain_timeout)
        if listener.tcp is not None:
            await listener.tcp.stop()

    async def stop(self) -> None:
        for listener in self.listeners.values():
            with contextlib.suppress(Exception):
                await self._close(listener, self.settings.drain_timeout)
        for checks in self.checks.values():
            await checks.stop()
        for backend in self.backends.values():
            await backend.close()
