"""Active health checks: `check inter 2s rise 2 fall 3`, over TCP or HTTP.

Each server is checked every `inter` seconds: a TCP connect, or with `kind = "http"` a
`GET path` whose status must be `expect_status` (`option httpchk` + `http-check expect`).
`fall` failures in a row mark it down, `rise` successes in a row bring it back. A server in
`maint` is not checked. Passive checks live in servers.py (Backend.failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from foobar.lb.servers import Backend, Server
from foobar.lb.settings import CheckSettings

log = logging.getLogger("foobar.lb.health")


async def probe(server: Server, check: CheckSettings) -> tuple[bool, str]:
    address = server.settings.address
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await asyncio.open_connection(address.host, address.port)
            try:
                if check.kind == "tcp":
                    return True, "L4OK"
                writer.write(
                    f"GET {check.path} HTTP/1.1\r\nHost: {address.host}\r\n"
                    "User-Agent: foobar-lb-check\r\nConnection: close\r\n\r\n".encode()
                )
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        return False, f"L4TOUT: no answer within {check.timeout}s"
    except OSError as exc:
        return False, f"L4CON: {exc.strerror or exc}"
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False, "L7RSP: not an HTTP response"
    status = int(parts[1])
    if status != check.expect_status:
        return False, f"L7STS: status {status}, expected {check.expect_status}"
    return True, f"L7OK: status {status}"


class HealthChecks:
    """One task per server of a backend, until stopped."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        check = self.backend.settings.check
        if check is None:
            return
        self._tasks = [
            asyncio.create_task(self._watch(server, check)) for server in self.backend.servers
        ]

    async def _watch(self, server: Server, check: CheckSettings) -> None:
        successes = failures = 0
        while True:
            if server.state != "maint":
                ok, reason = await probe(server, check)
                if ok:
                    successes, failures = successes + 1, 0
                    if not server.up and successes >= check.rise:
                        server.set_health(True, reason)
                        self.backend.wake_one()
                    elif server.up:
                        server.check_status = reason
                else:
                    successes, failures = 0, failures + 1
                    if server.up and failures >= check.fall:
                        server.set_health(False, reason)
                    else:
                        server.check_status = f"{reason} ({failures}/{check.fall})"
            await asyncio.sleep(check.inter)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
