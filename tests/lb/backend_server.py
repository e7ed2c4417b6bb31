"""A backend for the balancer's tests, run as its own process so it can be killed -9.
Usage: python -m tests.lb.backend_server NAME [PORT]; prints its port.
GET /healthz → 200; anything else → {"server": NAME, "path": ...} after ?delay=SECONDS."""

from __future__ import annotations

import asyncio
import json
import sys
from urllib.parse import parse_qs

import uvloop

from foobar.http.server import Request, Response, Server


async def main(name: str, port: int) -> None:
    async def handler(request: Request) -> Response:
        await request.body.read()
        if request.path == b"/healthz":
            return Response(200, [], b"ok\n")
        query = parse_qs(request.query.decode())
        await asyncio.sleep(float(query.get("delay", ["0"])[0]))
        body = json.dumps({"server": name, "path": request.path.decode()}).encode()
        return Response(200, [(b"Content-Type", b"application/json")], body)

    server = Server(handler)
    await server.start("127.0.0.1", port)
    print(server.address[1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0))
