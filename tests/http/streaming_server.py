"""A server for the memory test, run as its own process so its peak RSS is its own.
Prints its port, then serves: POST /upload (counts the body), GET /download?N (N bytes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import uvloop

from foobar.http.server import Request, Response, Server, ServerConfig

CHUNK = b"x" * 65536


async def handler(request: Request) -> Response:
    if request.method == "POST":
        total = 0
        async for chunk in request.body:
            total += len(chunk)
        return Response(200, [], str(total).encode())
    size = int(request.query)

    async def produce() -> AsyncIterator[bytes]:
        left = size
        while left > 0:
            piece = CHUNK[: min(left, len(CHUNK))]
            left -= len(piece)
            yield piece

    return Response(200, [(b"Content-Length", str(size).encode())], produce())


async def main() -> None:
    server = Server(handler, ServerConfig(max_body_bytes=1 << 30))
    await server.start("127.0.0.1", 0)
    print(server.address[1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
