"""A server for the memory test, run as its own process so its peak RSS is its own.
Prints its port, then serves: POST /upload (answers "LENGTH SHA256" of the body it
read), GET /download?N (N bytes of `blocks()`, whose digest `digest_of(N)` gives)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import uvloop

from foobar.http.server import Request, Response, Server, ServerConfig
from tests.conftest import RawClient, peak_rss_mib

BLOCK = 65536
ROOT = Path(__file__).resolve().parents[2]
# 200 MB moved; buffers are 64 KiB high-water marks plus a read of up to 256 KiB
MAX_GROWTH_MIB = 20


def blocks(size: int) -> Iterator[bytes]:
    """`size` bytes in 64 KiB blocks, each different (a block lost, repeated or moved
    changes the digest): block i is sha256(i) repeated."""
    index = 0
    while size > 0:
        block = hashlib.sha256(index.to_bytes(8, "big")).digest() * (BLOCK // 32)
        yield block[:size]
        size -= BLOCK
        index += 1


def digest_of(size: int) -> str:
    digest = hashlib.sha256()
    for block in blocks(size):
        digest.update(block)
    return digest.hexdigest()


async def handler(request: Request) -> Response:
    if request.method == "POST":
        total = 0
        digest = hashlib.sha256()
        async for chunk in request.body:
            total += len(chunk)
            digest.update(chunk)
        return Response(200, [], f"{total} {digest.hexdigest()}".encode())
    size = int(request.query)

    async def produce() -> AsyncIterator[bytes]:
        for block in blocks(size):
            yield block

    return Response(200, [(b"Content-Length", str(size).encode())], produce())


async def main() -> None:
    server = Server(handler, ServerConfig(max_body_bytes=1 << 30))
    await server.start("127.0.0.1", 0)
    print(server.address[1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())


async def upload_and_download(client: RawClient, size: int, chunked: bool = False) -> None:
    """The client side: POST `size` bytes of `blocks()` (chunked or with a length) and
    check the server read exactly them, then GET `size` bytes and check their digest."""
    if chunked:
        await client.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    else:
        await client.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
    for block in blocks(size):
        await client.send(b"%x\r\n%b\r\n" % (len(block), block) if chunked else block)
    if chunked:
        await client.send(b"0\r\n\r\n")
    status, _, body = await client.response(timeout=60)
    assert (status, body.decode()) == (200, f"{size} {digest_of(size)}")

    await client.send(b"GET /download?%d HTTP/1.1\r\nHost: a\r\n\r\n" % size)
    head = await client.reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: %d\r\n" % size in head
    received, digest = 0, hashlib.sha256()
    while received < size:
        chunk = await asyncio.wait_for(client.reader.read(min(1 << 20, size - received)), 10)
        assert chunk, f"the download ended after {received} of {size} bytes"
        received += len(chunk)
        digest.update(chunk)
    assert digest.hexdigest() == digest_of(size)


@contextlib.asynccontextmanager
async def streaming_upstream() -> AsyncIterator[tuple[int, int]]:
    """This server as its own process (so its peak RSS is its own): (pid, port)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.http.streaming_server",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        yield process.pid, int(await asyncio.wait_for(process.stdout.readline(), 10))
    finally:
        process.terminate()
        await process.wait()


async def streams_with_flat_memory(pid: int, port: int, size: int, chunked: bool = False) -> None:
    """Through 127.0.0.1:`port` to a streaming_upstream: `upload_and_download`, while the
    peak RSS of process `pid` (the one in the middle, or the server itself) stays flat."""
    client = await RawClient.connect(("127.0.0.1", port))
    await client.send(b"GET /warmup?1024 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await client.response())[0] == 200
    baseline = peak_rss_mib(pid)
    await upload_and_download(client, size, chunked)
    growth = peak_rss_mib(pid) - baseline
    assert growth < MAX_GROWTH_MIB, f"peak RSS of {pid} grew by {growth:.1f} MiB moving 2x{size}"
