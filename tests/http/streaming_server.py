"""A server for the memory test, run as its own process so its peak RSS is its own.
Prints its port, then serves: POST /upload (answers "LENGTH SHA256" of the body it
read), GET /download?N (N bytes of `blocks()`, whose digest `digest_of(N)` gives)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator

import uvloop

from foobar.http.server import Request, Response, Server, ServerConfig
from tests.conftest import RawClient

BLOCK = 65536


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
