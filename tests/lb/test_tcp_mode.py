"""TCP mode: bytes both ways with flat memory, half-close, and the PROXY protocol."""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import pytest
import trustme

from foobar.http import proxy_protocol
from foobar.http.server import Request, Response, Server
from foobar.lb import tcp_proxy
from tests.conftest import foobar_process, peak_rss_mib, start_server, wait_listening
from tests.dbcluster import free_port
from tests.lb.conftest import StartLb, url_of

pytestmark = pytest.mark.timeout(90)
SIZE = 100 * 1024 * 1024
PIECE = b"t" * 262144


async def test_100_mb_both_ways_half_closed_with_flat_memory() -> None:
    received_by_backend = 0

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Reads until the client's FIN, then answers 100 MB: only a half-close lets the
        answer through."""
        nonlocal received_by_backend
        while chunk := await reader.read(1 << 20):
            received_by_backend += len(chunk)
        for _ in range(SIZE // len(PIECE)):
            writer.write(PIECE)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    backend_port = server.sockets[0].getsockname()[1]
    port = free_port()
    async with (
        server,
        foobar_process(
            "foobar.lb",
            "--mode",
            "tcp",
            "--bind",
            f"127.0.0.1:{port}",
            "--backend",
            f"127.0.0.1:{backend_port}",
        ) as lb,
    ):
        await wait_listening(port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"warm")
        await writer.drain()
        await asyncio.sleep(0.2)
        baseline = peak_rss_mib(lb.pid)
        for _ in range(SIZE // len(PIECE)):
            writer.write(PIECE)
            await writer.drain()
        writer.write_eof()  # half-close: our direction ends, theirs goes on
        received = 0
        while chunk := await asyncio.wait_for(reader.read(1 << 20), 10):
            received += len(chunk)
        writer.close()
        assert received_by_backend == SIZE + 4
        assert received == SIZE
        growth = peak_rss_mib(lb.pid) - baseline
        assert growth < 20, f"the balancer's peak RSS grew by {growth:.1f} MiB"


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_send_proxy_tells_the_server_who_the_client_is(
    start_lb: StartLb, version: str
) -> None:
    preambles: list[tuple[str, int] | None] = []

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(1024)
        parsed = proxy_protocol.parse(data)
        assert parsed is not None
        consumed, source = parsed
        preambles.append(source)
        writer.write(data[consumed:].upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    async with server:
        backend_port = server.sockets[0].getsockname()[1]
        lb = await start_lb(
            frontends=[{"name": "tcp", "bind": "127.0.0.1:0", "mode": "tcp", "backend": "db"}],
            backends=[
                {
                    "name": "db",
                    "check": None,
                    "servers": [f"s=127.0.0.1:{backend_port},send-proxy={version}"],
                }
            ],
        )
        tcp = lb.balancer.listeners["tcp"].tcp
        assert tcp is not None and tcp.listener is not None
        port = tcp.listener.address[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        local_port = writer.get_extra_info("sockname")[1]
        writer.write(b"hello")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b"HELLO"
        writer.close()
    assert preambles == [("127.0.0.1", local_port)]


async def test_accept_proxy_takes_the_client_from_the_preamble(
    start_lb: StartLb, servers: list[Server]
) -> None:
    forwarded: list[bytes | None] = []

    async def upstream(request: Request) -> Response:
        forwarded.append(request.header(b"x-forwarded-for"))
        return Response(200, [], b"ok")

    backend = await start_server(upstream)
    servers.append(backend)
    lb = await start_lb(
        frontends=[
            {"name": "default", "bind": "127.0.0.1:0", "backend": "web", "accept_proxy": True}
        ],
        backends=[{"name": "web", "check": None, "servers": [f"a=127.0.0.1:{backend.address[1]}"]}],
    )
    host, port = url_of(lb).removeprefix("http://").split(":")
    for version in (1, 2):
        reader, writer = await asyncio.open_connection(host, int(port))
        preamble = proxy_protocol.build(version, ("198.51.100.7", 40000), ("192.0.2.1", 443))
        writer.write(preamble + b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
        writer.close()
    assert forwarded == [b"198.51.100.7", b"198.51.100.7"]
    # without a preamble the connection is closed without a word
    async with httpx.AsyncClient(base_url=url_of(lb)) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get("/")


async def test_tcp_accept_proxy_picks_by_the_real_client(start_lb: StartLb) -> None:
    """accept-proxy on a tcp listener: the preamble is read, not passed on, and `source`
    hashing keys on the address it carries: every connection really comes from
    127.0.0.1, so only the preamble's address can spread eight clients over four
    servers and keep each client on its own."""
    received: list[tuple[str, bytes]] = []

    def backend_named(name: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
        async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.append((name, await reader.read(1024)))
            writer.write(name.encode())
            await writer.drain()
            writer.close()

        return backend

    names = ["s1", "s2", "s3", "s4"]
    started = [await asyncio.start_server(backend_named(name), "127.0.0.1", 0) for name in names]
    try:
        lb = await start_lb(
            frontends=[
                {
                    "name": "tcp",
                    "bind": "127.0.0.1:0",
                    "mode": "tcp",
                    "backend": "db",
                    "accept_proxy": True,
                }
            ],
            backends=[
                {
                    "name": "db",
                    "check": None,
                    "algorithm": "source",
                    "servers": [
                        f"{name}=127.0.0.1:{server.sockets[0].getsockname()[1]}"
                        for name, server in zip(names, started, strict=True)
                    ],
                }
            ],
        )
        tcp = lb.balancer.listeners["tcp"].tcp
        assert tcp is not None and tcp.listener is not None
        port = tcp.listener.address[1]

        async def connect_as(client_ip: str, split: bool) -> str:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            preamble = proxy_protocol.build(1, (client_ip, 40000), ("192.0.2.1", 5432))
            if split:  # the preamble across two reads
                writer.write(preamble[:10])
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(preamble[10:] + b"payload")
            else:
                writer.write(preamble + b"payload")
            await writer.drain()
            served_by = (await asyncio.wait_for(reader.read(), 5)).decode()
            writer.close()
            return served_by

        clients = [f"198.51.100.{n}" for n in range(1, 9)]
        first = {ip: await connect_as(ip, split=ip == clients[0]) for ip in clients}
        again = {ip: await connect_as(ip, split=False) for ip in reversed(clients)}
    finally:
        for server in started:
            server.close()
    assert again == first  # each client stays on its server
    assert len(set(first.values())) > 1, first  # and the clients spread
    assert all(data == b"payload" for _, data in received)  # the preamble was not passed on
    assert len(received) == 16


IDLE = 0.5  # the timeout_client of the idle-timeout tests, in seconds


async def tcp_frontend_port(start_lb: StartLb, backend_port: int, **frontend: Any) -> int:
    """A balancer with one tcp frontend (timeout_client IDLE) to one server; its port."""
    lb = await start_lb(
        frontends=[
            {
                "name": "tcp",
                "bind": "127.0.0.1:0",
                "mode": "tcp",
                "backend": "b",
                "timeout_client": IDLE,
                **frontend,
            }
        ],
        backends=[{"name": "b", "check": None, "servers": [f"s=127.0.0.1:{backend_port}"]}],
    )
    tcp = lb.balancer.listeners["tcp"].tcp
    assert tcp is not None and tcp.listener is not None
    return tcp.listener.address[1]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
    writer.close()


async def echoed_past_the_timeout(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Four timeouts' worth of pings to the echo server, a third of a timeout apart: each
    comes back, the balancer never finds the connection idle."""
    for _ in range(12):
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        await asyncio.sleep(IDLE / 3)


async def closed_after(reader: asyncio.StreamReader) -> float:
    """Seconds until the balancer closes the connection (nothing more may arrive)."""
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(reader.read(), 10 * IDLE) == b""
    return asyncio.get_running_loop().time() - started


async def test_once_joined_the_bytes_run_no_python_in_the_balancer(start_lb: StartLb) -> None:
    """Each side's reads go straight to the other's transport.write: the per-chunk cost is
    uvloop's read and write, none of tcp_proxy's code (the balancer runs in this process
    and thread, so a profile hook sees its calls)."""
    calls: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_filename == tcp_proxy.__file__:
            calls[frame.f_code.co_name] += 1

    async with await asyncio.start_server(echo, "127.0.0.1", 0) as server:
        port = await tcp_frontend_port(
            start_lb, server.sockets[0].getsockname()[1], timeout_client=60.0
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"joined?")
        assert await asyncio.wait_for(reader.readexactly(7), 5) == b"joined?"
        sys.setprofile(profile)
        try:
            for _ in range(20):
                writer.write(b"ping")
                assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        finally:
            sys.setprofile(None)
        writer.close()
    assert not calls, calls


async def test_bytes_from_the_client_keep_a_connection_open_past_the_timeout(
    start_lb: StartLb,
) -> None:
    async with await asyncio.start_server(echo, "127.0.0.1", 0) as server:
        port = await tcp_frontend_port(start_lb, server.sockets[0].getsockname()[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await echoed_past_the_timeout(reader, writer)
        assert IDLE * 0.5 < await closed_after(reader) < IDLE * 3
        writer.close()


async def test_bytes_from_the_server_keep_a_connection_open_past_the_timeout(
    start_lb: StartLb,
) -> None:
    async def ticking(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(12):
            writer.write(b"tick")
            await asyncio.sleep(IDLE / 3)
        await reader.read()  # then silent, until the balancer closes

    async with await asyncio.start_server(ticking, "127.0.0.1", 0) as server:
        port = await tcp_frontend_port(start_lb, server.sockets[0].getsockname()[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.readexactly(4 * 12), 10) == b"tick" * 12
        assert await closed_after(reader) < IDLE * 3
        writer.close()


async def test_a_client_that_never_sends_its_proxy_preamble_is_closed(
    start_lb: StartLb,
) -> None:
    async def unused(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with await asyncio.start_server(unused, "127.0.0.1", 0) as server:
        port = await tcp_frontend_port(
            start_lb, server.sockets[0].getsockname()[1], accept_proxy=True
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"PROXY TCP4 ")  # and nothing more
        assert IDLE * 0.5 < await closed_after(reader) < IDLE * 3
        writer.close()


async def test_tls_terminated_bytes_are_spliced_and_timed_out(
    start_lb: StartLb, tmp_path: Path
) -> None:
    """With TLS the splice is made on the TLS transport, and the idle time is read from
    the TCP socket under it."""
    authority = trustme.CA()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued = authority.issue_cert("127.0.0.1")
    issued.private_key_and_cert_chain_pem.write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    context = ssl.create_default_context()
    authority.configure_trust(context)

    async with await asyncio.start_server(echo, "127.0.0.1", 0) as server:
        port = await tcp_frontend_port(
            start_lb,
            server.sockets[0].getsockname()[1],
            tls_cert=str(cert),
            tls_key=str(key),
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        await echoed_past_the_timeout(reader, writer)
        assert IDLE * 0.5 < await closed_after(reader) < IDLE * 3
        writer.close()
