"""Flow control both ways, shared by the server's and the upstream client's protocols.

Parsed events wait in a queue for the task that consumes them; reading from the socket
pauses while more than `high_water` bytes wait there and resumes below `low_water`. Writes
go straight to the transport; a writer awaits `drain()` while the transport's own buffer
is over its high-water mark (`pause_writing` / `resume_writing`).
"""

from __future__ import annotations

import asyncio
import collections
from typing import cast

from foobar.http.parser import Event

# What a queued head or end-of-message counts for: pipelined heads also take memory.
EVENT_SIZE = 512


class FlowControlled(asyncio.Protocol):
    # Slots: a server keeps one of these per connection (10 000 idle ones in the
    # benchmark), and its subclasses have more attributes than CPython 3.11 shares keys
    # for (30): each had a dict of its own (1.6 KiB) and slower attribute access.
    __slots__ = (
        "buffered",
        "closed",
        "drain_waiter",
        "event_waiter",
        "events",
        "high_water",
        "loop",
        "low_water",
        "reading_paused",
        "transport",
    )
    transport: asyncio.Transport | None

    def __init__(self, high_water: int, low_water: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport = None
        self.high_water = high_water
        self.low_water = low_water
        self.events: collections.deque[Event] = collections.deque()
        self.buffered = 0
        self.closed = False  # no more bytes will arrive
        self.reading_paused = False
        self.event_waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(self.high_water, self.low_water)

    def queue(self, events: list[Event]) -> None:
        self.events.extend(events)
        for event in events:
            self.buffered += len(event) if isinstance(event, bytes) else EVENT_SIZE
        if self.buffered > self.high_water:
            self.pause_reading()
        self.wake()

    def pop(self) -> Event:
        event = self.events.popleft()
        self.buffered -= len(event) if isinstance(event, bytes) else EVENT_SIZE
        if self.reading_paused and self.buffered < self.low_water:
            self.resume_reading()
        return event

    def wake(self) -> None:
        waiter = self.event_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_for_event(self) -> None:
        if self.reading_paused and not self.buffered:
            self.resume_reading()
        self.event_waiter = self.loop.create_future()
        try:
            await self.event_waiter
        finally:
            self.event_waiter = None

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    # writing

    def pause_writing(self) -> None:
        self.drain_waiter = self.loop.create_future()

    def resume_writing(self) -> None:
        self.wake_drain(None)

    async def drain(self) -> None:
        if self.drain_waiter is not None:
            await self.drain_waiter

    def wake_drain(self, exc: Exception | None) -> None:
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)
                waiter.exception()  # marked retrieved: nobody may be waiting on it
