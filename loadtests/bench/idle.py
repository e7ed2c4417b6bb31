"""Holds N idle keep-alive connections to a server: each sends one request, reads the
answer, then stays open and silent. Prints "held N" once all are open, then waits for
its standard input to close.

    python -m loadtests.bench.idle HOST PORT N"""

from __future__ import annotations

import asyncio
import resource
import sys


async def hold(host: str, port: int, count: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = []
    for start in range(0, count, 500):  # in batches: the listen backlog is finite
        batch = await asyncio.gather(
            *(asyncio.open_connection(host, port) for _ in range(min(500, count - start)))
        )
        for _, writer in batch:
            writer.write(b"GET / HTTP/1.1\r\nHost: idle\r\n\r\n")
        for reader, _ in batch:
            await reader.readuntil(b"\r\n\r\n")
        held.extend(batch)
    print(f"held {len(held)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(hold(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
