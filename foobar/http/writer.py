"""Writing responses: the status line and head, the framing decision, and the body:
bytes, a stream (with backpressure, chunked when its length is unknown) or a file
(sendfile(2) straight from the page cache on plain connections).

    lines, framing = frame(request_head, response, keep_alive)   # pure: no I/O
    sent, complete = await ResponseWriter(sink).write(request_head, response, keep_alive)

`frame` is the one place that decides Content-Length, chunked or close-delimited, no
body (HEAD, 1xx, 204, 304), the Date field and the Connection field; a handler's own
framing fields are dropped, as they would contradict the real framing.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final, Protocol

from foobar.http import headers as hdrs
from foobar.http import limits
from foobar.http.errors import ConnectionClosed, HTTPError, ProtocolError
from foobar.http.parser import RequestHead

log = logging.getLogger("foobar.http.server")


@dataclass(frozen=True, slots=True)
class FileBody:
    """`count` bytes of an open file from `offset`, sent with sendfile(2) on plain
    connections. The server closes `fd` once the response is written, unless
    `keep_open`: then the descriptor is a cache's, which closes it, and only
    `Request.respond_raw` takes the body (it has sent the file when it returns, or given
    the task a copy of the descriptor for the rest)."""

    fd: int
    offset: int
    count: int
    keep_open: bool = field(default=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class FileRest(FileBody):
    """What is left of a file whose head and first `sent_before` bytes the fast path
    sent (`ResponseWriter.send_file_now`) before the socket was full: the task's writer
    sends the rest, and no head."""

    sent_before: int


@dataclass(slots=True)
class Response:
    status: int
    headers: hdrs.Headers = field(default_factory=list)
    body: bytes | AsyncIterable[bytes] | FileBody = b""
    reason: bytes | None = None


_monotonic: Final = time.monotonic
# the Date field line, and the monotonic clock's time until which its second holds
_DATE_CACHE: list[Any] = [-1.0, b""]


def date_field(now: float | None = None) -> bytes:
    """The Date field line (`Date: ...\r\n`), formatted once a second. The wall clock is
    read only when the second ends: one monotonic read a call (the wall's, turned into
    a whole second and compared, cost 1.7k instructions a response, 4% of a small file's),
    none when the caller has read it (`now`: a request's `arrived`, the loop's clock for
    this iteration, as nginx's cached time; the Date then turns with the first request
    read after the second's end)."""
    # the monotonic clock before the wall's: the second ends no later than it says (read
    # after it, the gap between the reads would serve the old second past its end)
    if now is None:
        now = _monotonic()
    if now < _DATE_CACHE[0]:
        line: bytes = _DATE_CACHE[1]
        return line
    wall = time.time()
    _DATE_CACHE[0] = now + 1 - wall % 1
    _DATE_CACHE[1] = line = (
        b"Date: %s\r\n" % email.utils.formatdate(int(wall), usegmt=True).encode()
    )
    return line


# Response fields the writer looks at: the framing ones it owns (a handler's copies would
# contradict the real framing), the declared length, and whether a Date was given.
_SPECIAL_FIELDS: Final = {
    b"connection": "framing",
    b"transfer-encoding": "framing",
    b"keep-alive": "framing",
    b"content-length": "length",
    b"date": "date",
}
_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int, reason: bytes | None) -> bytes:
    if reason is None:
        line = _STATUS_LINES.get(status)
        if line is None:
            phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
            line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode())
        return line
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


@dataclass(frozen=True, slots=True)
class Framing:
    """How a response's body is delimited on the wire."""

    length: int | None  # Content-Length, when known
    no_body: bool  # HEAD, 1xx, 204, 304: the head is all that is sent
    chunked: bool  # length unknown, HTTP/1.1: Transfer-Encoding: chunked
    keep_alive: bool  # the connection carries another request after this one


class Sink(Protocol):
    """What the writer needs of the connection it writes to."""

    transport: asyncio.Transport | None
    drain_waiter: asyncio.Future[None] | None
    scheme: str

    @property
    def high_water(self) -> int: ...

    @property
    def low_water(self) -> int: ...

    async def wait_writable(self) -> None:
        """Until the transport's buffer is below its low-water mark (send timeout running)."""
        ...


class ResponseWriter:
    """Writes one connection's responses, one at a time."""

    __slots__ = ("_socket_fd", "sink")

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._socket_fd: int | None = -1  # -1: not asked yet (see _sendfile_socket)

    async def write(
        self, request_head: RequestHead, response: Response, keep_alive: bool
    ) -> tuple[int, bool]:
        """Write `response`; returns (body bytes sent, whether the framing was kept)."""
        transport = self.sink.transport
        assert transport is not None
        lines, framing = frame(request_head, response, keep_alive)
        length, no_body, keep_alive = framing.length, framing.no_body, framing.keep_alive
        body = response.body
        if transport.is_closing():
            await discard(body)  # a proxied stream must still end: its upstream, its slot
            raise ConnectionClosed("client closed the connection")
        if isinstance(body, bytes):
            if not no_body and body:
                lines.append(body)
            transport.write(b"".join(lines))
            if self.sink.drain_waiter is not None:
                await self.sink.wait_writable()
            return (0 if no_body else length or 0), keep_alive
        if isinstance(body, FileBody):
            assert not body.keep_open, "a kept-open file is the fast path's (send_file_now)"
            sent_before = 0
            if isinstance(body, FileRest):
                sent_before = body.sent_before
            else:
                transport.write(b"".join(lines))
            try:
                sent = 0 if no_body else await self._send_file(body)
            finally:
                os.close(body.fd)
            return sent_before + sent, keep_alive and (no_body or sent == body.count)
        if no_body:
            transport.write(b"".join(lines))
            await close_iterable(body)
            return 0, keep_alive
        return await self._stream_body(b"".join(lines), body, length, framing.chunked, keep_alive)

    def send_file_now(self, head: bytes, body: FileBody) -> FileRest | None:
        """Write `head`, then as much of the file as the socket takes at once, from the
        fast path's callbacks: nginx's one sendfile(2) per response, without the task's
        wake-ups. None when all of it went (`body.fd` is closed); otherwise what is left
        for `write` to send, waiting for room (or to meet the error again and end)."""
        transport = self.sink.transport
        assert transport is not None
        offset, left = body.offset, body.count
        if not transport.is_closing():  # else `write` meets the closed connection
            transport.write(head)
            socket_fd = self._socket_fd
            if socket_fd == -1:  # not asked yet: once a connection, then read without a call
                socket_fd = self._sendfile_socket()
            if socket_fd is not None and not transport.get_write_buffer_size():  # the head went
                try:
                    while left > 0 and (sent := os.sendfile(socket_fd, body.fd, offset, left)):
                        offset += sent
                        left -= sent
                except OSError:
                    pass  # full (EAGAIN), or gone: `write` waits, or raises ConnectionClosed
            if left == 0:
                if not body.keep_open:
                    os.close(body.fd)
                return None
        # the rest outlives this call, and a kept-open descriptor may not: its own copy
        fd = os.dup(body.fd) if body.keep_open else body.fd
        return FileRest(fd, offset, left, body.count - left)

    async def _send_file(self, body: FileBody) -> int:
        """sendfile(2) straight from the page cache to the socket while the socket takes
        it; when it is full, one chunk goes through the transport, whose drain says when
        the socket has room again. uvloop has no native loop.sendfile (asyncio's falls
        back to reading the file in a thread), hence this."""
        transport = self.sink.transport
        assert transport is not None
        socket_fd = self._sendfile_socket()
        offset, left = body.offset, body.count
        while left > 0:
            sent: int | None = None
            if socket_fd is not None:
                await self._drain_all()  # our bytes must not overtake the transport's
                try:
                    sent = os.sendfile(socket_fd, body.fd, offset, left)
                except BlockingIOError:
                    sent = None
                except OSError as exc:
                    raise ConnectionClosed(f"client gone during sendfile: {exc}") from exc
            if sent is None:
                chunk = os.pread(body.fd, min(left, limits.FILE_CHUNK), offset)
                sent = len(chunk)
                if chunk:
                    transport.write(chunk)
                    await self.sink.wait_writable()
            if sent == 0:
                log.warning("event=file_shrank sent=%d missing=%d", body.count - left, left)
                break
            offset += sent
            left -= sent
        return body.count - left

    def _sendfile_socket(self) -> int | None:
        """The socket's descriptor when sendfile(2) may write to it: on a plain connection
        (TLS has to encrypt what is sent). Asked once: a connection keeps its socket."""
        if self._socket_fd == -1:
            transport = self.sink.transport
            sock = None if transport is None else transport.get_extra_info("socket")
            plain = self.sink.scheme == "http"
            self._socket_fd = sock.fileno() if plain and sock is not None else None
        return self._socket_fd

    async def _drain_all(self) -> None:
        """Wait until the transport has written everything it holds."""
        transport = self.sink.transport
        assert transport is not None
        while transport.get_write_buffer_size():
            # a high-water mark of 0 makes the transport pause us (pause_writing) until
            # its buffer is empty (resume_writing)
            transport.set_write_buffer_limits(0, 0)
            try:
                await self.sink.wait_writable()
            finally:
                transport.set_write_buffer_limits(self.sink.high_water, self.sink.low_water)

    async def _stream_body(
        self,
        head: bytes,
        body: AsyncIterable[bytes],
        length: int | None,
        chunked: bool,
        keep_alive: bool,
    ) -> tuple[int, bool]:
        """The head goes out with the first piece of the body: one write, not two, for
        the common small response."""
        transport = self.sink.transport
        assert transport is not None
        sent = 0
        try:
            async for chunk in body:
                if not chunk:
                    continue
                sent += len(chunk)
                if length is not None and sent > length:
                    raise ProtocolError(f"response body longer than its Content-Length {length}")
                if chunked:
                    transport.writelines((head, b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.writelines((head, chunk))
                head = b""
                if self.sink.drain_waiter is not None:
                    await self.sink.wait_writable()
        except (HTTPError, OSError) as exc:
            if isinstance(exc, ConnectionClosed):
                raise
            # The status line is gone: the only way left to say "broken" is to cut the
            # connection, so the client sees a truncated body, not a complete wrong one.
            log.warning("event=response_aborted reason=%r sent=%d", str(exc), sent)
            return sent, False
        finally:
            if head:
                transport.write(head)  # the body ended (or broke) before its first byte
            await close_iterable(body)
        if length is not None and sent != length:
            log.warning("event=response_short declared=%d sent=%d", length, sent)
            return sent, False
        if chunked:
            transport.write(b"0\r\n\r\n")
            await self.sink.wait_writable()
        return sent, keep_alive


def frame(head: RequestHead, response: Response, keep_alive: bool) -> tuple[list[bytes], Framing]:
    """The response's head as a list of byte strings, and the framing its writer keeps
    to. `keep_alive`: whether the connection may carry another request as far as the
    caller knows; the framing can still close it (HTTP/1.0 without a length)."""
    status = response.status
    body = response.body
    no_body = head.method == "HEAD" or status < 200 or status in (204, 304)
    lines = [status_line(status, response.reason)]
    length: int | None = None
    has_date = False
    for name, value in response.headers:
        special = _SPECIAL_FIELDS.get(name.lower())
        if special is not None:
            if special == "framing":
                continue
            if special == "length":
                length = int(value)
                continue
            has_date = True
        lines += (name, b": ", value, b"\r\n")
    if not has_date:
        lines.append(date_field())
    if no_body and length is not None:
        pass  # a declared length stands when no body is sent: HEAD, 304 (RFC 9110 §8.6)
    elif status == 304:
        pass  # and only a declared one: an empty body is not the size
    elif isinstance(body, bytes):
        length = len(body)
    elif isinstance(body, FileBody):
        length = body.count
    chunked = length is None and not no_body and head.version == "1.1"
    if length is None and not no_body and not chunked:
        keep_alive = False  # HTTP/1.0 without a length: the close ends the body
    if length is not None and status >= 200 and status != 204:
        lines += (b"Content-Length: ", str(length).encode(), b"\r\n")
    elif chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    if not keep_alive:
        lines.append(b"Connection: close\r\n\r\n")
    elif head.version == "1.0":
        lines.append(b"Connection: keep-alive\r\n\r\n")
    else:
        lines.append(b"\r\n")
    return lines, Framing(length, no_body, chunked, keep_alive)


async def discard(body: bytes | AsyncIterable[bytes] | FileBody) -> None:
    if isinstance(body, FileBody):
        os.close(body.fd)
    elif not isinstance(body, bytes):
        await close_iterable(body)


async def close_iterable(body: AsyncIterable[bytes]) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()
