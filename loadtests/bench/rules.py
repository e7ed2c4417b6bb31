"""The floor (floor.py) with the rules foobar.lb applies to every proxied request, written
as tightly as the floor: a measuring stick for the forwarding engine, not a product.

    python -m loadtests.bench.instructions rules floor lb

What it adds to the floor, each as foobar does it: one Host (checked against RFC 9112's
grammar, the last valid one remembered), HTTP/1.0 or 1.1 only, a head carrying a field
the proxy sets or a hop-by-hop one not relayed as received (here: refused, the benchmark
sends none), the head otherwise relayed as received with X-Forwarded-For and
X-Forwarded-Proto added, a server's slot taken and given back with its counters, the
answer's Connection field taken out by foobar's own `relayed_head` and X-Foobar-LB added,
the keep-alive decision, responses counted by status, the upstream's time and the
timestamps the timeouts read. What it leaves out is nothing the benchmark's requests
need, but some of it foobar must still check for on every answer: a task for what must
wait, timeouts themselves, retries, pipelining, bodies, a head or an answer over several
reads, and the answers that are not plain (interim 1xx, chunked, to HEAD, bytes after the
end). foobar.lb's instructions per request less this one's is what its structure and
those checks cost; this one's less the floor's is what its rules cost."""

from __future__ import annotations

import asyncio
import collections
import itertools
import sys
import time

import uvloop

from foobar.http.forward import relayed_head
from foobar.http.headers import NOT_RELAYED
from foobar.http.parser import _HOST  # the parser's own Host grammar
from loadtests.bench import floor

ADDED = b"X-Foobar-LB: bench\r\n"
# the process's numbers, as foobar keeps them: responses by status, and each server's
BY_STATUS: collections.defaultdict[int, int] = collections.defaultdict(int)
KEEP_ALIVE_END, CLOSE_END = b"\r\n", b"Connection: close\r\n\r\n"


class Counters:
    """A server's numbers, as foobar.lb keeps them."""

    def __init__(self) -> None:
        self.active = self.sessions = self.requests = 0


COUNTERS: collections.defaultdict[int, Counters] = collections.defaultdict(Counters)  # by port


class Upstream(floor.Upstream):
    """The answer goes to the client through its rules, not as received."""

    def __init__(
        self, idle: list[floor.Upstream], client: floor.Client, request: bytes, port: int
    ) -> None:
        super().__init__(idle, client, request)
        self.loop = asyncio.get_running_loop()
        self.port = port  # the server's, whose counters the answer updates

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        self.data = data  # the whole answer: what the benchmark's backends send
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        data, parser = self.data, self.parser
        end = data.find(b"\r\n\r\n") + 4
        status, keep_alive = parser.get_status_code(), parser.should_keep_alive()
        client, self.client = self.client, None
        if keep_alive:
            self.idle_since = self.last_read
            self.idle.append(self)
        else:
            self.transport.close()
        if isinstance(client, Client):
            client.relay(status, data[:end], data[end:], self.port)


class Client(floor.Client):
    def __init__(self, backends: itertools.cycle[tuple[str, int, list[floor.Upstream]]]) -> None:
        super().__init__(backends)
        self.loop = asyncio.get_running_loop()
        self.valid_host: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.forwarding = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\n" % self.address

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        self.data = data
        super().data_received(data)

    def on_message_begin(self) -> None:
        self.url = b""  # the floor's on_url gathers it, as foobar's parser does
        self.host: bytes | None = None
        self.relayable = True

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"host":
            if self.host is not None:
                raise ValueError("2 Host fields")
            self.host = value
        elif lowered in NOT_RELAYED:
            self.relayable = False

    def on_headers_complete(self) -> None:
        if self.parser.get_http_version() not in ("1.0", "1.1"):
            raise ValueError("version")
        host = self.host
        if host is None:
            raise ValueError("0 Host fields")
        if host != self.valid_host:
            if _HOST.fullmatch(host) is None:
                raise ValueError("invalid Host")
            self.valid_host = host
        self.keep = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        data = self.data
        if not self.relayable or data.find(b"\r\n\r\n") != len(data) - 4:
            self.transport.close()  # rebuilt by foobar; not what the benchmark sends
            return
        self.waiting.append((b"".join((data[:-2], self.forwarding, b"\r\n")), self.keep))
        if not self.busy:
            self.forward()

    def forward(self) -> None:
        self.busy, (request, self.keep_alive) = True, self.waiting.popleft()
        host, port, idle = next(self.backends)
        counters = COUNTERS[port]  # the server's numbers
        counters.active += 1
        counters.sessions += 1
        self.started = time.monotonic()
        if idle:
            upstream = idle.pop()
            upstream.idle_since = None  # type: ignore[attr-defined]
            upstream.client = self
            upstream.transport.write(request)
            return
        loop = self.loop
        opening = loop.create_connection(lambda: Upstream(idle, self, request, port), host, port)
        loop.create_task(opening).add_done_callback(self.opened)

    def relay(self, status: int, raw: bytes, body: bytes, port: int) -> None:
        counters = COUNTERS[port]
        counters.active -= 1
        counters.requests += 1
        self.upstream = ("server", status, time.monotonic() - self.started)
        head = relayed_head(raw, ADDED)
        if head is None:
            self.transport.close()  # rebuilt by foobar; not what the benchmark's backends send
            return
        if not self.transport.is_closing():
            self.transport.write(
                b"".join((head, KEEP_ALIVE_END if self.keep_alive else CLOSE_END, body))
            )
        BY_STATUS[status] += 1
        self.last_write = self.last_read
        self.answered()


if __name__ == "__main__":
    uvloop.run(floor.main(sys.argv[1], sys.argv[2:], Client))
