"""Python's floor for an HTTP/1.1 keep-alive proxy on uvloop + httptools: what the same
machine can do in Python with none of foobar's rules, run beside foobar and the peers.

    python -m loadtests.bench.floor BIND_HOST:PORT BACKEND_HOST:PORT [BACKEND_HOST:PORT ...]

Round robin over the backends, pooled upstream keep-alive connections, X-Forwarded-For
appended, everything done in the protocols' callbacks (a task only to open a connection).
It is a floor, not a product: it forwards GET requests, one at a time per client
connection (pipelined ones wait their turn), and relays Content-Length-framed answers as
received; that is all the benchmark sends."""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections import deque

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    """One pooled connection to a backend, serving one client request at a time."""

    def __init__(self, idle: list[Upstream], client: Client, request: bytes) -> None:
        self.idle, self.request = idle, request
        self.client: Client | None = client
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.client and not self.client.transport.is_closing():
            self.client.transport.write(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        if self.parser.should_keep_alive():
            self.idle.append(self)
        else:
            self.transport.close()
        if client:
            client.answered()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.idle:
            self.idle.remove(self)
        if self.client:  # gone mid-answer: the client cannot be answered any more
            self.client.transport.close()


class Client(asyncio.Protocol):
    """One client connection: its requests are forwarded one after the other."""

    def __init__(self, backends: itertools.cycle[tuple[str, int, list[Upstream]]]) -> None:
        self.backends, self.waiting, self.busy = backends, deque[tuple[bytes, bool]](), False
        self.parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.address = transport.get_extra_info("peername")[0].encode()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = self.forwarded = b""
        self.fields: list[bytes] = []

    def on_url(self, url: bytes) -> None:
        self.url += url  # in pieces when it spans two reads

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"x-forwarded-for":
            self.forwarded = value + b", "
        elif lowered != b"connection":  # hop-by-hop: each side keeps its own connection
            self.fields += (name, b": ", value, b"\r\n")

    def on_body(self, body: bytes) -> None:
        self.transport.close()  # not what the benchmark sends

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        head = b"".join((method, b" ", self.url, b" HTTP/1.1\r\n", *self.fields))
        forwarded = b"X-Forwarded-For: %s%s\r\n\r\n" % (self.forwarded, self.address)
        self.waiting.append((head + forwarded, self.parser.should_keep_alive()))
        if not self.busy:
            self.forward()

    def forward(self) -> None:
        self.busy, (request, self.keep_alive) = True, self.waiting.popleft()
        host, port, idle = next(self.backends)
        if idle:
            upstream = idle.pop()
            upstream.client = self
            upstream.transport.write(request)
            return
        # a new connection: the one task, and only until it is open
        loop = asyncio.get_running_loop()
        opening = loop.create_connection(lambda: Upstream(idle, self, request), host, port)
        loop.create_task(opening).add_done_callback(self.opened)

    def opened(self, task: asyncio.Task[tuple[asyncio.BaseTransport, Upstream]]) -> None:
        if task.cancelled() or task.exception():
            self.transport.close()

    def answered(self) -> None:
        self.busy = False
        if not self.keep_alive:
            self.transport.close()
        elif self.waiting and not self.transport.is_closing():
            self.forward()


async def serve(bind: str, backends: list[str], client: type[Client] = Client) -> asyncio.Server:
    """Listen on `bind`; `client`: the protocol for client connections (rules.py's)."""
    pools = [
        (host, int(port), list[Upstream]()) for host, port in (b.rsplit(":", 1) for b in backends)
    ]
    cycle = itertools.cycle(pools)
    host, port = bind.rsplit(":", 1)
    return await asyncio.get_running_loop().create_server(lambda: client(cycle), host, int(port))


async def main(bind: str, backends: list[str], client: type[Client] = Client) -> None:
    await (await serve(bind, backends, client)).serve_forever()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], sys.argv[2:]))
