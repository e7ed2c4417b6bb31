"""Log lines: key=value events on one line, and the access log in the combined format."""

from __future__ import annotations

import logging
import re

import pytest

from foobar import logs
from foobar.http.parser import RequestHead, RequestParser
from foobar.http.server import Exchange, Request


class FakeConnection:
    """Only what Request reads from its connection."""

    peer = ("192.0.2.7", 51000)
    scheme = "http"


def test_event_line_folds_traceback_into_one_line() -> None:
    formatter = logs.KeyValueFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "foobar.web", logging.ERROR, "", 0, "event=x a=%d", (1,), sys.exc_info()
        )
    line = formatter.format(record)
    assert "\n" not in line
    assert re.match(r"ts=\S+Z level=error logger=foobar.web event=x a=1 traceback='Traceback", line)


def test_access_line_is_combined_format_plus_times() -> None:
    head = RequestParser().feed(
        b"GET /api/posts?limit=2 HTTP/1.1\r\nHost: a\r\nReferer: http://x/\r\n"
        b'User-Agent: curl/8 "quoted"\r\n\r\n'
    )[0]
    assert isinstance(head, RequestHead)
    request = Request(head, FakeConnection())  # type: ignore[arg-type]
    request.upstream.update({"ua": "10.0.0.3:8000", "urt": "0.003"})
    line = logs.access_line(Exchange(request, 200, 512, 1_764_172_253.0, 0.0042))
    assert line == (
        '192.0.2.7 - - [26/Nov/2025:15:50:53 +0000] "GET /api/posts?limit=2 HTTP/1.1" 200 512 '
        '"http://x/" "curl/8 \\"quoted\\"" rt=0.004 ua=10.0.0.3:8000 urt=0.003'
    )


def test_setup_routes_access_lines_plainly(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("info")
    logging.getLogger("foobar.access").info("1.2.3.4 - - plain")
    logging.getLogger("foobar.web").info("event=started")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "1.2.3.4 - - plain"
    assert err[1].endswith("level=info logger=foobar.web event=started")
