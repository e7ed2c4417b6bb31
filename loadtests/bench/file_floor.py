"""Python's floor for serving static files over HTTP/1.1 keep-alive on uvloop + httptools:
what the same machine can do in Python with none of foobar's rules, run beside foobar.web
and nginx in the file tests (floor.py is the proxies' floor).

    python -m loadtests.bench.file_floor BIND_HOST:PORT ROOT

Each file is looked up once and kept: its whole-file head serialised (the fields nginx
and foobar.web send), a small file's bytes in memory (one write answers it, as
foobar.web's), a larger one's descriptor open for sendfile(2). The Date is made once a
second. Everything runs in the protocol's callbacks. It is a floor, not a product: GET of
a file under ROOT, or 404; no validators, ranges, timeouts or limits; that is all the
benchmark sends."""

from __future__ import annotations

import asyncio
import email.utils
import os
import sys
import time
from pathlib import Path

import httptools
import uvloop

SMALL_FILE = 64 * 1024  # foobar.web's: files up to this size are answered from memory
FIELDS = b"Content-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\n"
FIELDS += b"Cache-Control: no-cache\r\nX-Foobar-Web: bench\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"


class Files:
    """What each path names, found on first use and kept; the Date of this second."""

    def __init__(self, root: str) -> None:
        self.root = Path(root).resolve()
        self.found: dict[bytes, tuple[bytes, bytes | int, int]] = {}
        self.second = 0
        self.date = b""

    def find(self, path: bytes) -> tuple[bytes, bytes | int, int]:
        """(head without Date, the bytes or the open descriptor, the size)."""
        file = self.found.get(path)
        if file is None:
            file = self.found[path] = self._open(path)
        return file

    def _open(self, path: bytes) -> tuple[bytes, bytes | int, int]:
        name = (self.root / os.fsdecode(path).lstrip("/")).resolve()
        if not name.is_relative_to(self.root) or not name.is_file():
            return NOT_FOUND, b"", 0
        info = name.stat()
        head = b"HTTP/1.1 200 OK\r\nServer: floor\r\n%sContent-Length: %d\r\n" % (
            FIELDS,
            info.st_size,
        )
        head += b'Last-Modified: %s\r\nETag: "%x-%x"\r\n' % (
            email.utils.formatdate(info.st_mtime, usegmt=True).encode(),
            int(info.st_mtime),
            info.st_size,
        )
        if info.st_size <= SMALL_FILE:
            return head, name.read_bytes(), info.st_size
        return head, os.open(name, os.O_RDONLY), info.st_size

    def date_field(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            formatted = email.utils.formatdate(now, usegmt=True).encode()
            self.second, self.date = now, b"Date: %s\r\n\r\n" % formatted
        return self.date


class Client(asyncio.Protocol):
    """One client connection: each request answered as it completes."""

    def __init__(self, files: Files) -> None:
        self.files = files
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.socket = transport.get_extra_info("socket").fileno()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url  # in pieces when it spans two reads

    def on_message_complete(self) -> None:
        head, body, size = self.files.find(self.url.partition(b"?")[0])
        self.url = b""
        head += self.files.date_field()
        if isinstance(body, bytes):
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self._send_file(body, size)
        if not self.parser.should_keep_alive():
            self.transport.close()

    def _send_file(self, fd: int, size: int) -> None:
        offset = 0
        try:
            # sendfile(2) only while the transport holds nothing it would send after it
            # (0 sent: the file shrank, and what is left of it goes below)
            while (
                offset < size
                and not self.transport.get_write_buffer_size()
                and (sent := os.sendfile(self.socket, fd, offset, size - offset))
            ):
                offset += sent
        except BlockingIOError:
            pass
        if offset < size:  # the socket is full (loopback takes a MiB at once)
            self.transport.write(os.pread(fd, size - offset, offset))


async def serve(bind: str, root: str) -> asyncio.Server:
    files = Files(root)
    host, port = bind.rsplit(":", 1)
    return await asyncio.get_running_loop().create_server(lambda: Client(files), host, int(port))


async def main(bind: str, root: str) -> None:
    await (await serve(bind, root)).serve_forever()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], sys.argv[2]))
