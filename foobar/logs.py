"""Logging for every role: one line per event, `key=value`, and the access log.

Event lines read `ts=... level=info logger=foobar.web event=started bind=0.0.0.0:80`: the
message itself is already `key=value` pairs, the formatter adds when, how bad and where.
A traceback is folded into the same line so a log shipper never splits an event.

The access log is nginx's combined format plus the request time and, for proxied
requests, the upstream's address, status and time, as nginx's `$upstream_addr`,
`$upstream_status` and `$upstream_response_time` are usually added:

    127.0.0.1 - - [26/Nov/2026:15:50:53 +0000] "GET /api/posts HTTP/1.1" 200 512 "-"
        "curl/8.5" rt=0.004 ua=10.0.0.3:8000 us=200 urt=0.003   (one line in the log)

Access lines go to stderr too, but not through `logging`, and buffered (see AccessLog).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from math import floor
from typing import Final, TextIO

from foobar.http.server import Request


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = (
            f"ts={stamp}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
            f"logger={record.name} {record.getMessage()}"
        )
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += " traceback=" + repr(trace)
        return line


def setup(level: str = "info") -> None:
    """Send event lines to stderr, one per line."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    events = logging.StreamHandler(sys.stderr)
    events.setFormatter(KeyValueFormatter())
    root.handlers[:] = [events]


class AccessLog:
    """Access lines, buffered as nginx's `access_log ... buffer=32k flush=1s`: written
    together once `flush_lines` have gathered or `flush_after` seconds after the first,
    and at exit. 256 lines are 32 KiB of wrk's 128-byte lines, ~80 KiB of a browser's,
    4 MiB at most (a line's fields are held to the header limits): lines are counted, not
    measured, as `len` on each cost a tenth of the line. Through `logging`, one line cost
    ~13 µs (a record, handlers, a write each): a fifth of the balancer's CPU per request;
    buffered, ~1 µs. The timer is armed by a buffer's first line, so lines left when a
    loop closed before its timer ran (tests run one loop after another; a server, one)
    wait for a full buffer or the exit."""

    def __init__(
        self, stream: TextIO | None = None, flush_lines: int = 256, flush_after: float = 1.0
    ) -> None:
        self.stream = stream  # None: sys.stderr at the time of writing
        self.flush_lines = flush_lines
        self.flush_after = flush_after
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        # the wall clock's current second as lines show it, and the loop's time until
        # which it holds: nginx's cached time, one clock read a second instead of a line
        self._second = ""
        self._second_ends = -1.0

    def record(self, request: Request, status: int, sent: int, duration: float, now: float) -> None:
        """The servers' `on_response` hook: one request's line (see the module's
        docstring), `now` being the loop's time (loop.time()) as its answer ended. The
        line's time is then, as nginx's `$time_local` is the time it logs."""
        referer, user_agent = request.referer, request.user_agent
        milliseconds = floor(duration * 1000 + 0.5)  # durations are never negative
        line = (
            f"{request.client[0]} - - "
            f"[{self._second if now < self._second_ends else self._tick(now)}] "
            f'"{request.method} {request.target.decode("latin-1")} HTTP/{request.version}" '
            f"{_STATUS_CODES.get(status) or status} "
            f"{_NUMBERS[sent] if sent < _NUMBERS_MAX else sent} "
            f"{_ABSENT if referer is None else _QUOTED.get(referer) or _quoted(referer)} "
            f"{_ABSENT if user_agent is None else _QUOTED.get(user_agent) or _quoted(user_agent)} "
            f"rt={_MILLISECONDS[milliseconds] if milliseconds < 1000 else f'{duration:.3f}'}"
        )
        upstream = request.upstream
        if upstream is not None:
            address, upstream_status, seconds = upstream
            milliseconds = floor(seconds * 1000 + 0.5)
            upstream_time = _MILLISECONDS[milliseconds] if milliseconds < 1000 else f"{seconds:.3f}"
            line = f"{line} ua={address} us={_STATUS_CODES[upstream_status]} urt={upstream_time}"
        # write(line), inline: a call less per request
        lines = self._lines
        lines.append(line)
        count = len(lines)
        if count >= self.flush_lines:
            self.flush()
        elif count == 1:  # the buffer's first line since it was written out
            self._flush_later()

    def _tick(self, now: float) -> str:
        """The loop's time `now` passed the second the lines show: read the wall clock."""
        wall = time.time()
        self._second = local_time(wall)
        self._second_ends = now + 1 - wall % 1
        return self._second

    def write(self, line: str) -> None:
        # (`record` does the same inline)
        lines = self._lines
        lines.append(line)
        count = len(lines)
        if count >= self.flush_lines:
            self.flush()
        elif count == 1:  # the buffer's first line since it was written out
            self._flush_later()

    def _flush_later(self) -> None:
        """The buffer's first line since it was written out: flush within `flush_after`."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to flush later: now, then
            self.flush()
            return
        self._timer = loop.call_later(self.flush_after, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            self._lines.append("")  # the last line's newline
            text = "\n".join(self._lines)
            self._lines = []
            stream = self.stream or sys.stderr
            try:
                stream.write(text)
                stream.flush()
            except (OSError, ValueError):  # stderr closed, or a pipe nobody reads: as logging
                pass  # does, serving goes on; the lines have nowhere to go


def local_time(wall: float) -> str:
    """A wall-clock time as the log writes it, to the second (the combined format's)."""
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(wall))


_ABSENT: Final = '"-"'  # a field the request did not carry
# Referer and User-Agent values as the log quotes them. They repeat (a site's pages, a
# handful of browsers), and quoting one costs more than the rest of its line's fields: a
# value is quoted once and looked up inline, in a table emptied when it fills.
_QUOTED: Final[dict[bytes, str]] = {}
_QUOTED_MAX: Final = 1024


def _quoted(value: bytes) -> str:
    """`value` quoted for the log (an empty one as absent, as nginx logs it), remembered
    in _QUOTED."""
    if len(_QUOTED) >= _QUOTED_MAX:
        _QUOTED.clear()
    text = value.decode("latin-1").replace("\\", "\\\\").replace('"', '\\"')
    quoted = _QUOTED[value] = f'"{text}"' if value else _ABSENT
    return quoted


# Seconds with three decimals, as nginx logs times, by the millisecond, and status codes
# (an upstream's has three digits: llhttp reads no others) and sizes under 4 KiB:
# formatting a number costs more than the rest of its field, so the values under a
# second (nearly all), the codes and small sizes are made once and looked up inline (a
# call per value cost as much again).
_MILLISECONDS: Final = [f"{ms / 1000:.3f}" for ms in range(1000)]
_STATUS_CODES: Final = {code: f"{code:03d}" for code in range(1000)}  # nginx: %03ui
_NUMBERS_MAX: Final = 4096
_NUMBERS: Final = [str(number) for number in range(_NUMBERS_MAX)]


access_log = AccessLog()
atexit.register(access_log.flush)
log_access = access_log.record
