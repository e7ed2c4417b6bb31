"""Log lines: key=value events on one line, and the access log in the combined format."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time

import pytest

from foobar import logs
from foobar.http.parser import RequestParser
from foobar.http.server import Request


class FakeConnection:
    """Only what Request reads from its connection."""

    peer = ("192.0.2.7", 51000)
    scheme = "http"
    forwarding_fields = b"X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n"


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


def logged(request: Request, status: int, sent: int, seconds: float, now: float = 0.0) -> str:
    """The line an access log writes for one request."""
    stream = io.StringIO()
    log = logs.AccessLog(stream)
    log.record(request, status, sent, seconds, now)
    log.flush()
    return stream.getvalue().removesuffix("\n")


def test_access_line_is_combined_format_plus_times() -> None:
    head = RequestParser(head_type=Request).feed(
        b"GET /api/posts?limit=2 HTTP/1.1\r\nHost: a\r\nReferer: http://x/\r\n"
        b'User-Agent: curl/8 "quoted"\r\n\r\n'
    )[0]
    assert isinstance(head, Request)
    request = head.bind(FakeConnection())  # type: ignore[arg-type]
    request.upstream = ("10.0.0.3:8000", 201, 0.0026)
    before = logs.local_time(time.time())
    line = logged(request, 200, 512, 0.0042)
    after = logs.local_time(time.time())
    assert line.removeprefix(f"192.0.2.7 - - [{before}] ") in (
        line.removeprefix(f"192.0.2.7 - - [{after}] "),
        line,  # the second changed in between: the line has the later one
    )
    assert line.endswith(
        ' "GET /api/posts?limit=2 HTTP/1.1" 200 512 '
        '"http://x/" "curl/8 \\"quoted\\"" rt=0.004 ua=10.0.0.3:8000 us=201 urt=0.003'
    )
    assert logs.local_time(1_764_172_253.9) == "26/Nov/2025:15:50:53 +0000"
    request.upstream = None
    slow = logged(request, 200, 512, 12.3456)
    assert slow.endswith(" rt=12.346")
    odd = logged(request, 1234, 0, 0.0)  # a handler's own code, logged as it is
    assert '" 1234 0 "' in odd


def test_the_time_is_read_once_a_second_of_the_loops_clock() -> None:
    head = Request("GET", b"/", "1.1", [], True, False, None, False)
    request = head.bind(FakeConnection())  # type: ignore[arg-type]
    stream = io.StringIO()
    log = logs.AccessLog(stream)
    log.record(request, 200, 0, 0.0, 100.0)
    log._second = "cached"  # what the clock read said, until the loop's clock passes 101
    log.record(request, 200, 0, 0.0, log._second_ends - 0.001)
    log.record(request, 200, 0, 0.0, log._second_ends)
    log.flush()
    times = [line.split("[")[1].split("]")[0] for line in stream.getvalue().splitlines()]
    assert times[1] == "cached" and times[0] != "cached" and times[2] != "cached"


def test_quoted_fields_are_escaped_and_remembered() -> None:
    head = RequestParser(head_type=Request).feed(
        b'GET / HTTP/1.1\r\nHost: a\r\nReferer: a\\b"c\r\n\r\n'
    )[0]
    assert isinstance(head, Request)
    request = head.bind(FakeConnection())  # type: ignore[arg-type]
    assert '"a\\\\b\\"c" "-" rt=' in logged(request, 200, 0, 0.0)
    assert logs._QUOTED[b'a\\b"c'] == '"a\\\\b\\"c"'
    empty = RequestParser(head_type=Request).feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent:\r\n\r\n"
    )[0]
    assert isinstance(empty, Request)
    assert '" 200 0 "-" "-" rt=' in logged(empty.bind(FakeConnection()), 200, 0, 0.0)  # type: ignore[arg-type]
    for number in range(logs._QUOTED_MAX + 1):  # a full table starts again
        logs._quoted(b"%d" % number)
    assert len(logs._QUOTED) <= logs._QUOTED_MAX


@pytest.mark.parametrize(
    "seconds", [0.0, 0.0004, 0.0005, 0.0015, 0.1234, 0.9994, 0.9996, 1.0, 7.25]
)
def test_times_are_logged_as_nginx_formats_them(seconds: float) -> None:
    head = Request("GET", b"/", "1.1", [], True, False, None, False)
    request = head.bind(FakeConnection())  # type: ignore[arg-type]
    request.upstream = ("10.0.0.3:8000", 200, seconds)
    line = logged(request, 200, 0, seconds)
    assert line.endswith(f" rt={seconds:.3f} ua=10.0.0.3:8000 us=200 urt={seconds:.3f}")


@pytest.mark.parametrize(
    ("status", "sent"), [(200, 0), (204, 4095), (404, 4096), (99, 10**9), (999, 1), (0, 7)]
)
def test_codes_and_sizes_are_logged_as_numbers(status: int, sent: int) -> None:
    """Codes with three digits, as nginx's %03ui writes them (an upstream's 099 is 99 to
    llhttp)."""
    head = Request("GET", b"/", "1.1", [], True, False, None, False)
    request = head.bind(FakeConnection())  # type: ignore[arg-type]
    assert f'" {status:03d} {sent} "-" "-" rt=' in logged(request, status, sent, 0.0)


def test_setup_sends_event_lines_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("info")
    logging.getLogger("foobar.web").info("event=started")
    logging.getLogger("foobar.web").debug("event=hidden")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].endswith("level=info logger=foobar.web event=started")


async def test_access_lines_are_written_together_within_the_flush_delay() -> None:
    stream = io.StringIO()
    log = logs.AccessLog(stream, flush_after=0.2)
    log.write("first")
    log.write("second")
    assert stream.getvalue() == ""  # buffered
    await asyncio.sleep(0.4)
    assert stream.getvalue() == "first\nsecond\n"
    log.write("third")  # a new delay starts with the next line
    await asyncio.sleep(0.4)
    assert stream.getvalue() == "first\nsecond\nthird\n"


def test_access_lines_are_written_once_the_buffer_fills_and_without_a_loop() -> None:
    stream = io.StringIO()
    log = logs.AccessLog(stream, flush_lines=2)
    log.write("12345")  # no running loop: nothing would flush later, so now
    assert stream.getvalue() == "12345\n"
    stream.truncate(0)
    stream.seek(0)
    log.flush()
    assert stream.getvalue() == ""


async def test_a_full_access_buffer_is_written_at_once() -> None:
    stream = io.StringIO()
    log = logs.AccessLog(stream, flush_lines=2, flush_after=60)
    log.write("12345")
    assert stream.getvalue() == ""
    log.write("67890")
    assert stream.getvalue() == "12345\n67890\n"
    log.flush()  # nothing left, and the timer is gone
    assert stream.getvalue() == "12345\n67890\n"


class BrokenOnce(io.StringIO):
    """A pipe whose reader went away once (EPIPE), then a new one took over."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    def write(self, text: str) -> int:
        if not self.failures:
            self.failures += 1
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def test_a_closed_stream_loses_the_lines_not_the_server() -> None:
    closed = io.StringIO()
    closed.close()
    log = logs.AccessLog(closed)
    log.write("lost")  # no loop: written at once, into a closed stream (ValueError)
    log.write("lost too")
    log.stream = broken = BrokenOnce()
    log.write("lost in the pipe")  # OSError: swallowed, the line dropped
    log.write("written")  # the stream works again: this line, and none of the lost ones
    assert broken.failures == 1
    assert broken.getvalue() == "written\n"


async def test_a_failing_stream_does_not_break_the_timer_flush() -> None:
    errors: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    stream = BrokenOnce()
    log = logs.AccessLog(stream, flush_after=0.01)
    log.write("lost")
    await asyncio.sleep(0.05)  # the timer's own delay: this test is about time
    log.write("written")
    log.flush()
    assert (stream.getvalue(), errors) == ("written\n", [])
