"""What a security review found at the balancer (issue 16): Host, the header count, and
upstream answers that must never be relayed. Each runs on both paths: a GET goes the fast
path (answered in callbacks), a POST with a body the task path."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from foobar.lb.stats import snapshot
from tests.conftest import RawClient, wait_listening
from tests.dbcluster import free_port
from tests.lb.conftest import ROOT, StartLb, address_of
from tests.lb.test_fast_path import before_raw_backend, lb_fields

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


async def test_maxconn_leaves_new_connections_in_the_backlog_until_one_closes(
    start_lb: StartLb,
) -> None:
    backend = Backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    raw = await asyncio.start_server(backend, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    fields = lb_fields(f"a=127.0.0.1:{port}")
    fields["frontends"][0]["maxconn"] = 2  # type: ignore[index]
    lb = await start_lb(**fields)
    first, second = [await RawClient.connect(address_of(lb)) for _ in range(2)]
    for client in (first, second):
        await client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await client.response())[0] == 200
    third = await RawClient.connect(address_of(lb))  # the kernel completes the handshake
    await third.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(TimeoutError):
        await third.response(timeout=0.5)  # not accepted: it waits in the backlog
    frontend = snapshot(lb.balancer)["frontends"][0]
    assert (frontend["connections"], frontend["maxconn"]) == (2, 2)
    assert frontend["paused"] >= 1
    first.close()
    assert (await third.response(timeout=5))[0] == 200  # accepted once one closed
    second.close()
    third.close()
    raw.close()


async def test_a_process_short_of_descriptors_keeps_serving(tmp_path: Path) -> None:
    """With an open-files limit of 100, the default maxconn is (100 - 64) / 2 = 18: 40
    clients get in turn, nobody is refused, and the balancer never hits EMFILE."""
    backend = Backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    raw = await asyncio.start_server(backend, "127.0.0.1", 0)
    backend_port = raw.sockets[0].getsockname()[1]
    port = free_port()
    log = (tmp_path / "lb.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100));"
        "sys.argv = sys.argv[1:]; runpy.run_module('foobar.lb', run_name='__main__')",
        "foobar.lb",
        "--bind",
        f"127.0.0.1:{port}",
        "--backend",
        f"127.0.0.1:{backend_port}",
        cwd=ROOT,
        stderr=log,
    )
    try:
        await wait_listening(port)
        clients = [await RawClient.connect(("127.0.0.1", port)) for _ in range(40)]
        answered = 0
        for client in clients:  # each answered, then closed: the next one gets in
            await client.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            answered += (await client.response(timeout=10))[0] == 200
            client.close()
        assert answered == 40
    finally:
        process.terminate()
        await process.wait()
        raw.close()
    text = (tmp_path / "lb.log").read_text()
    assert "Too many open files" not in text and "connection_limit limit=18" in text
