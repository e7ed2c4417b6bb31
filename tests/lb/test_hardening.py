"""What a security review found at the balancer (issue 16): Host, the header count, and
upstream answers that must never be relayed. Each runs on both paths: a GET goes the fast
path (answered in callbacks), a POST with a body the task path."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import RawClient
from tests.lb.conftest import StartLb, address_of
from tests.lb.test_fast_path import before_raw_backend

pytestmark = pytest.mark.timeout(30)

PATHS = pytest.mark.parametrize(
    "request_line,body",
    [(b"GET / HTTP/1.1", b""), (b"POST / HTTP/1.1", b"hi")],
    ids=["fast path", "task path"],
)


class Backend:
    """A raw server: answers each request with `answer`, counts requests and connections."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests = 0
        self.connections = 0
        self.closed = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if b"Content-Length: 2" in head:
                    await reader.readexactly(2)
                self.requests += 1
                writer.write(self.answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed += 1
        writer.close()


def request(request_line: bytes, fields: bytes, body: bytes) -> bytes:
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    return request_line + b"\r\n" + fields + length + b"\r\n" + body


@PATHS
@pytest.mark.parametrize(
    "fields",
    [b"", b"Host: a\r\nHost: b\r\n", b"Host: a b\r\n", b"Host: a/b\r\n", b"Host: a@b\r\n"],
    ids=["no Host", "two Hosts", "space", "slash", "userinfo"],
)
async def test_a_bad_host_is_refused_before_a_backend_sees_it(
    start_lb: StartLb, request_line: bytes, body: bytes, fields: bytes
) -> None:
    backend = Backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    lb, raw = await before_raw_backend(start_lb, backend)
    client = await RawClient.connect(address_of(lb))
    await client.send(request(request_line, fields, body))
    status, _, _ = await client.response()
    assert status == 400
    assert backend.requests == 0
    client.close()
    raw.close()


@pytest.mark.parametrize(
    "head", [b"GET / HTTP/1.0\r\n", b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n"], ids=str
)
async def test_good_hosts_pass(start_lb: StartLb, head: bytes) -> None:
    backend = Backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    lb, raw = await before_raw_backend(start_lb, backend)
    client = await RawClient.connect(address_of(lb))
    await client.send(head + b"\r\n")
    assert (await client.response())[0] == 200
    client.close()
    raw.close()


@PATHS
@pytest.mark.parametrize("count,status", [(98, 200), (101, 431)])  # Host, Content-Length
async def test_header_fields_are_counted_whatever_their_size(
    start_lb: StartLb, request_line: bytes, body: bytes, count: int, status: int
) -> None:
    backend = Backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    lb, raw = await before_raw_backend(start_lb, backend)
    client = await RawClient.connect(address_of(lb))
    fields = b"Host: a\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(count))
    await client.send(request(request_line, fields, body))
    assert (await client.response())[0] == status
    assert backend.requests == (1 if status == 200 else 0)
    client.close()
    raw.close()


@PATHS
@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",  # malformed status line
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20000 + b"\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",  # split
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokgarbage",  # bytes after the answer
    ],
    ids=["malformed", "head over the limit", "a second response", "bytes after"],
)
async def test_a_bad_answer_is_a_502_and_its_connection_is_closed(
    start_lb: StartLb, request_line: bytes, body: bytes, answer: bytes
) -> None:
    backend = Backend(answer)
    lb, raw = await before_raw_backend(start_lb, backend, retries=0)
    client = await RawClient.connect(address_of(lb))
    await client.send(request(request_line, b"Host: a\r\n", body))
    status, _, response_body = await client.response()
    assert status == 502
    assert b"ok" not in response_body and b"garbage" not in response_body
    for _ in range(50):
        if backend.closed == backend.connections:
            break
        await asyncio.sleep(0.02)
    assert backend.closed == backend.connections == 1  # never pooled again
    client.close()
    raw.close()
