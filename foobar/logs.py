"""Logging for every role: one line per event, `key=value`, and the access log.

Event lines read `ts=... level=info logger=foobar.web event=started bind=0.0.0.0:80`: the
message itself is already `key=value` pairs, the formatter adds when, how bad and where.
A traceback is folded into the same line so a log shipper never splits an event.

The access log (logger `foobar.access`) is nginx's combined format plus the request time
and, for proxied requests, the upstream address and its time, as nginx's
`$upstream_addr` / `$upstream_response_time` are usually added:

    127.0.0.1 - - [26/Nov/2026:15:50:53 +0000] "GET /api/posts HTTP/1.1" 200 512 "-"
        "curl/8.5" rt=0.004 ua=10.0.0.3:8000 urt=0.003          (one line in the log)
"""

from __future__ import annotations

import logging
import sys
import time

from foobar.http.server import Exchange

access_log = logging.getLogger("foobar.access")


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
    """Send event lines and access lines to stderr, one per line."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    events = logging.StreamHandler(sys.stderr)
    events.setFormatter(KeyValueFormatter())
    events.addFilter(lambda record: record.name != access_log.name)
    access = logging.StreamHandler(sys.stderr)
    access.setFormatter(logging.Formatter("%(message)s"))
    access.addFilter(lambda record: record.name == access_log.name)
    root.handlers[:] = [events, access]


_CLOCK_CACHE: dict[int, str] = {}


def _local_time(seconds: float) -> str:
    whole = int(seconds)
    text = _CLOCK_CACHE.get(whole)
    if text is None:
        _CLOCK_CACHE.clear()
        text = _CLOCK_CACHE[whole] = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(whole))
    return text


def _quoted(value: bytes | None) -> str:
    if not value:
        return '"-"'
    text = value.decode("latin-1").replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def access_line(exchange: Exchange) -> str:
    request = exchange.request
    head = request.head
    line = (
        f"{request.client[0]} - - [{_local_time(exchange.started)}] "
        f'"{head.method} {head.target.decode("latin-1")} HTTP/{head.version}" '
        f"{exchange.status} {exchange.bytes_sent} "
        f"{_quoted(request.header(b'referer'))} {_quoted(request.header(b'user-agent'))} "
        f"rt={exchange.duration:.3f}"
    )
    for key, value in request.upstream.items():
        line += f" {key}={value:.3f}" if isinstance(value, float) else f" {key}={value}"
    return line


def log_access(exchange: Exchange) -> None:
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(access_line(exchange))
