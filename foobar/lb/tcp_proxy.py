"""TCP mode: a server is picked per connection and bytes move both ways.

Each side is a Protocol. Once the server is connected, what one side reads goes straight
into the other's `transport.write`, with no Python in between (`Side.splice`): a chunk
costs a read and a write, as in HAProxy. When one side's write buffer passes its
high-water mark, the other side stops being read until it drains, so memory stays flat
whatever the sizes. A FIN from one side is passed on (half-close) while the other
direction keeps flowing; the connection ends when both directions have ended, either side
is lost, or nothing moved for the client/server timeout, as the kernel tells it
(`seconds_since_data`: no chunk is timed). A connection failure is retried (`retries`),
on another server when there is one (`redispatch`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import struct
from ssl import SSLContext
from typing import TYPE_CHECKING, cast

from foobar.http import limits, proxy_protocol
from foobar.http.errors import ProtocolError
from foobar.http.listener import Listener
from foobar.lb.algorithms import RequestKeys
from foobar.lb.servers import Backend, NoServer, Server
from foobar.lb.settings import FrontendSettings

if TYPE_CHECKING:
    from foobar.lb.balancer import Balancer

log = logging.getLogger("foobar.lb.tcp")

# struct tcp_info (linux/tcp.h): milliseconds since the last data segment sent, at byte 44,
# and received, at byte 52 (tcpi_last_ack_sent, between them, is never set)
_LAST_DATA_AT = 44
_LAST_DATA = struct.Struct("=I4xI")


def seconds_since_data(transport: asyncio.BaseTransport) -> float:
    """Seconds since data last went out of or came in on the transport's TCP connection.
    The kernel keeps both times (TCP_INFO, Linux), so the proxy has no clock to reset per
    chunk; a socket already closed counts as idle for ever."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return math.inf
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _LAST_DATA_AT + _LAST_DATA.size)
    except OSError:
        return math.inf
    sent_ms, received_ms = _LAST_DATA.unpack_from(info, _LAST_DATA_AT)
    return float(min(sent_ms, received_ms)) / 1000


class Side(asyncio.Protocol):
    """One end of a proxied connection: the client's or the server's."""

    def __init__(self, session: Session, is_client: bool) -> None:
        self.session = session
        self.is_client = is_client
        self.transport: asyncio.Transport | None = None
        self.eof = False  # this side has finished sending

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(limits.HIGH_WATER, limits.LOW_WATER)
        if self.is_client:
            self.session.client_connected(self)

    def other(self) -> Side | None:
        return self.session.server_side if self.is_client else self.session.client_side

    def data_received(self, data: bytes) -> None:
        """Only until `splice`: a PROXY preamble, and bytes that come before the server."""
        self.session.forward(self, data)

    def splice(self, peer: asyncio.Transport) -> None:
        """From now on what this side sends is handed to `peer.write` by the transport
        itself. uvloop looks `data_received` up when the protocol is set, hence the
        set_protocol: the bound method is called from its read callback, and no Python
        frame runs per chunk (those frames were half the user-space instructions of a
        forwarded request: `python -m loadtests.bench.instructions lb-tcp`)."""
        self.data_received = peer.write  # type: ignore[method-assign]
        assert self.transport is not None
        self.transport.set_protocol(self)

    def eof_received(self) -> bool:
        self.eof = True
        self.session.half_closed(self)
        return True  # keep the other direction open

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.lost(self)

    # the other side's buffer is full or drained: stop or resume reading this one
    def pause_writing(self) -> None:
        other = self.other()
        if other is not None and other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.other()
        if other is not None and other.transport is not None and not other.eof:
            other.transport.resume_reading()


class Session:
    """One client connection and the server connection made for it."""

    def __init__(self, frontend: TcpFrontend) -> None:
        self.frontend = frontend
        self.loop = asyncio.get_running_loop()
        self.client_side: Side | None = None
        self.server_side: Side | None = None
        self.backend: Backend | None = None
        self.server: Server | None = None
        self.pending: list[bytes] = []  # client bytes that arrived before the server
        self.preamble = proxy_protocol.Preamble() if frontend.settings.accept_proxy else None
        self.client_address: tuple[str, int] = ("", 0)
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def client_connected(self, side: Side) -> None:
        self.client_side = side
        assert side.transport is not None
        peer = side.transport.get_extra_info("peername")
        self.client_address = (peer[0], peer[1]) if isinstance(peer, tuple) else ("", 0)
        self.arm_timer(self.frontend.timeout)  # now: a PROXY preamble may never end
        if self.preamble is None:
            self.start()

    def start(self) -> None:
        assert self.client_side is not None and self.client_side.transport is not None
        self.client_side.transport.pause_reading()  # until the server is connected
        self.frontend.connect_task(self)

    def forward(self, side: Side, data: bytes) -> None:
        if side is self.client_side and self.preamble is not None:
            data = self.read_preamble(data)
            if not data:
                return
        other = side.other()
        if other is None or other.transport is None:
            self.pending.append(data)
            return
        other.transport.write(data)

    def read_preamble(self, data: bytes) -> bytes:
        """The PROXY preamble first; then the server is picked for the real client."""
        preamble = self.preamble
        assert preamble is not None
        try:
            rest = preamble.feed(data)
        except ProtocolError as exc:
            log.info("event=bad_proxy_preamble peer=%s reason=%r", self.client_address[0], str(exc))
            self.close()
            return b""
        if rest is None:
            return b""
        self.preamble = None
        if preamble.source is not None:
            self.client_address = preamble.source
        if rest:
            self.pending.append(rest)
        self.start()
        return b""

    def connected(self, server_side: Side, backend: Backend, server: Server) -> None:
        self.server_side, self.backend, self.server = server_side, backend, server
        client_side = self.client_side
        assert client_side is not None and client_side.transport is not None
        assert server_side.transport is not None
        if server.settings.send_proxy is not None:
            version = 2 if server.settings.send_proxy == "v2" else 1
            local = client_side.transport.get_extra_info("sockname")
            destination = (local[0], local[1]) if isinstance(local, tuple) else ("0.0.0.0", 0)
            server_side.transport.write(
                proxy_protocol.build(version, self.client_address, destination)
            )
        for data in self.pending:
            server_side.transport.write(data)
        self.pending.clear()
        client_side.splice(server_side.transport)
        server_side.splice(client_side.transport)
        if client_side.eof:
            server_side.transport.write_eof()
        else:
            client_side.transport.resume_reading()

    def half_closed(self, side: Side) -> None:
        other = side.other()
        if other is not None and other.transport is not None and other.transport.can_write_eof():
            other.transport.write_eof()
        client, server = self.client_side, self.server_side
        if client is not None and server is not None and client.eof and server.eof:
            self.close()

    def lost(self, side: Side) -> None:
        self.close()

    def arm_timer(self, delay: float) -> None:
        self.timer = self.loop.call_later(delay, self.on_timer)

    def on_timer(self) -> None:
        if self.closed:
            return
        left = self.frontend.timeout - self.idle_seconds()
        if left > 0:
            self.arm_timer(left)
        else:
            log.info("event=idle_timeout peer=%s", self.client_address[0])
            self.close()

    def idle_seconds(self) -> float:
        """Since data last moved on either connection, either way."""
        return min(
            seconds_since_data(side.transport)
            for side in (self.client_side, self.server_side)
            if side is not None and side.transport is not None
        )

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        for side in (self.client_side, self.server_side):
            if side is not None and side.transport is not None and not side.transport.is_closing():
                side.transport.close()
        if self.backend is not None and self.server is not None:
            self.backend.release(self.server)
            self.server = None
        self.frontend.closed(self)


class TcpFrontend:
    def __init__(self, settings: FrontendSettings, balancer: Balancer) -> None:
        self.settings = settings
        self.balancer = balancer
        self.sessions: set[Session] = set()
        self.listener: Listener | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def timeout(self) -> float:
        backend = self.balancer.backends[self.settings.backend]
        return min(self.settings.timeout_client, backend.settings.timeout_server)

    def protocol(self) -> Side:
        session = Session(self)
        self.sessions.add(session)
        return Side(session, is_client=True)

    def closed(self, session: Session) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            if self.listener is not None:
                self.listener.connection_closed()

    async def start(self, ssl: SSLContext | None = None, reuse_port: bool = False) -> None:
        bind = self.settings.bind
        self.listener = Listener(
            self.protocol, lambda: len(self.sessions), self.settings.maxconn, ssl
        )
        await self.listener.start(bind.host, bind.port, reuse_port=reuse_port)

    def connect_task(self, session: Session) -> None:
        task = asyncio.create_task(self.connect(session))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def connect(self, session: Session) -> None:
        backend = self.balancer.backends[self.settings.backend]
        info = RequestKeys(session.client_address[0])
        attempt = 0
        avoid: Server | None = None
        loop = asyncio.get_running_loop()
        while not session.closed:
            try:
                server = await backend.acquire(info, avoid if backend.settings.redispatch else None)
            except NoServer as exc:
                log.info("event=no_server frontend=%s reason=%r", self.settings.name, str(exc))
                session.close()
                return
            address = server.settings.address
            try:
                async with asyncio.timeout(backend.settings.timeout_connect):
                    _, side = await loop.create_connection(
                        lambda: Side(session, is_client=False), address.host, address.port
                    )
            except (OSError, TimeoutError) as exc:
                if backend.connect_failed(server, attempt, str(exc) or "timeout"):
                    attempt += 1
                    avoid = server
                    continue
                session.close()
                return
            if session.closed:  # the client left while we connected
                backend.release(server)
                if side.transport is not None:
                    side.transport.close()
                return
            server.counters.requests += 1
            backend.succeeded(server)
            session.connected(side, backend, server)
            return

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
        for session in list(self.sessions):
            session.close()
        for task in list(self.tasks):
            task.cancel()
