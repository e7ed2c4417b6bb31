"""What every role's process does around its work: wait for the signal to stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Mapping


async def until_stopped(handlers: Mapping[int, Callable[[], None]] | None = None) -> None:
    """Return on SIGTERM or SIGINT (systemd's stop, Ctrl-C); other signals given in
    `handlers` (SIGHUP for a reload) call theirs and keep waiting."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for stop in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop, stopping.set)
    for signum, handler in (handlers or {}).items():
        loop.add_signal_handler(signum, handler)
    await stopping.wait()
