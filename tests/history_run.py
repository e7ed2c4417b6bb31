"""The history checker as a process, for hosts in network namespaces:

    python -m tests.history_run --app URL --server NAME=HOST:PORT ... --password P --control DIR

It posts through the app until DIR/stop appears; DIR/fault marks when the fault was
injected; DIR/stop holds the names of the servers that must have every acknowledged
post. Prints `VERDICT <json>` last. Bounded: it stops by itself after MAX_SECONDS."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from tests.history import Checker

MAX_SECONDS = 120.0


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", required=True)
    parser.add_argument("--server", action="append", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--control", type=Path, required=True)
    options = parser.parse_args()
    servers = {}
    for item in options.server:
        name, _, address = item.partition("=")
        host, _, port = address.rpartition(":")
        servers[name] = {
            "host": host,
            "port": int(port),
            "user": "foobar",
            "password": options.password,
            "db": "foobar",
        }
    checker = Checker([options.app], servers)
    checker.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAX_SECONDS
    fault, stop = options.control / "fault", options.control / "stop"
    while not stop.exists() and loop.time() < deadline:
        if checker.history.fault_at is None and fault.exists():
            checker.fault()
        await asyncio.sleep(0.05)
    await checker.stop()
    must_hold = stop.read_text().split() if stop.exists() else list(servers)
    verdict = await checker.verdict(must_hold)
    print("VERDICT " + json.dumps(verdict), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
