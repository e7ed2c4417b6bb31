"""A listening socket with a connection limit: HAProxy's `maxconn`, nginx's
`worker_connections`.

Below the limit every pending connection is accepted at once; at the limit the socket is
no longer polled, so new connections wait in the kernel's listen backlog (and, once that
is full, their SYNs go unanswered and the clients retry) instead of being accepted and
starving those already in: the process never runs out of file descriptors. Accepting
resumes as soon as a connection closes. If the process does run out (EMFILE: something
else took the descriptors), accepting pauses for a moment rather than spinning on an
error, as HAProxy and nginx do.

    listener = Listener(protocol_factory, open_count=lambda: len(connections), limit=1000)
    await listener.start("0.0.0.0", 8080)
    ...
    listener.connection_closed()   # from every connection's connection_lost
    listener.close()
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import ssl as ssl_module
from collections.abc import Callable
from typing import Final

log = logging.getLogger("foobar.http.listener")

# Accepted connections not yet handed to their protocol (a TLS handshake) count too.
BACKLOG: Final = 1024  # nginx's default on Linux is 511, HAProxy's is maxconn
# Descriptors kept for everything but client connections: files, logs, admin, checks.
RESERVED_FDS: Final = 64
# How long accepting pauses when the process is out of descriptors. nginx: 500 ms.
OUT_OF_FDS_PAUSE: Final = 0.5
_OUT_OF_RESOURCES: Final = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def default_limit() -> int:
    """HAProxy's default maxconn, derived from the open-files limit: half of what is left
    after the reserve, since a proxied connection also holds one to its server."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, (soft - RESERVED_FDS) // 2)


class Listener:
    def __init__(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        open_count: Callable[[], int],
        limit: int | None = None,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self.protocol_factory = protocol_factory
        self.open_count = open_count  # connections open, as their owner counts them
        self.limit = limit or default_limit()
        self.ssl = ssl
        self.paused_at_limit = 0  # times accepting stopped at the limit (stats)
        self.sock: socket.socket | None = None
        self._polling = False
        self._handshaking = 0  # accepted, not yet handed to their protocol
        self._tasks: set[asyncio.Task[None]] = set()
        self._resume_timer: asyncio.TimerHandle | None = None

    async def start(
        self,
        host: str | None,
        port: int,
        *,
        reuse_port: bool = False,
        sock: socket.socket | None = None,
    ) -> None:
        if sock is None:
            family = socket.AF_INET6 if host is not None and ":" in host else socket.AF_INET
            sock = socket.create_server(
                (host or "", port), family=family, backlog=BACKLOG, reuse_port=reuse_port
            )
        sock.setblocking(False)
        self.sock = sock
        self._poll()

    @property
    def address(self) -> tuple[str, int]:
        assert self.sock is not None
        name = self.sock.getsockname()
        return name[0], name[1]

    @property
    def at_limit(self) -> bool:
        return self._handshaking + self.open_count() >= self.limit

    def connection_closed(self) -> None:
        """A connection ended: accept again if it was the limit that stopped us."""
        stopped = not self._polling and self.sock is not None and self._resume_timer is None
        if stopped and not self.at_limit:
            self._poll()

    def close(self) -> None:
        """Stop accepting and close the socket; open connections are their owner's."""
        self._stop_polling()
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        for task in self._tasks:
            task.cancel()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _poll(self) -> None:
        assert self.sock is not None
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)
        self._polling = True

    def _stop_polling(self) -> None:
        if self._polling and self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self._polling = False

    def _accept(self) -> None:
        sock = self.sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        while not self.at_limit:
            try:
                connection, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while waiting in the backlog
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                log.error("event=accept_paused reason=%r for=%.1fs", exc.strerror, OUT_OF_FDS_PAUSE)
                self._stop_polling()
                self._resume_timer = loop.call_later(OUT_OF_FDS_PAUSE, self._resume)
                return
            self._handshaking += 1
            task = loop.create_task(self._attach(connection))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.paused_at_limit += 1
        log.info("event=connection_limit limit=%d", self.limit)
        self._stop_polling()

    def _resume(self) -> None:
        self._resume_timer = None
        if self.sock is not None and not self._polling:
            self._poll()

    async def _attach(self, connection: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(self.protocol_factory, connection, ssl=self.ssl)
        except (OSError, ssl_module.SSLError) as exc:  # a failed handshake, a reset
            log.debug("event=accept_failed reason=%r", str(exc))
            connection.close()
        finally:
            self._handshaking -= 1
            self.connection_closed()
