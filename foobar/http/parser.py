"""HTTP/1.1 message parsing with no I/O: feed bytes, get events.

The only module that imports httptools (llhttp, Node's parser). llhttp is strict by default
and already refuses the request-smuggling shapes: Content-Length with Transfer-Encoding,
two Content-Length fields, a Transfer-Encoding that does not end in `chunked`, bare LF,
whitespace before a colon, obs-fold. This layer adds what llhttp leaves to its caller: the
header-size limit, HTTP versions other than 1.0/1.1, upgrade requests, and bodiless
responses to HEAD.

    parser = RequestParser()
    for event in parser.feed(data):
        RequestHead / ResponseHead   a message's head
        bytes                        a piece of its body, framing removed
        END                          the message is complete

A malformed message raises a `ProtocolError` that carries the status to answer with and,
in `events`, the complete messages parsed before the fault (earlier pipelined requests
are still answered, the broken one is not); the parser is unusable after that and the
connection must be closed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, NoReturn

import httptools

from foobar.http import headers as hdrs
from foobar.http.errors import HeadersTooLarge, ProtocolError, VersionNotSupported
from foobar.http.limits import MAX_HEADER_BYTES, MAX_HEADER_FIELDS


class EndOfMessage:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END: Final = EndOfMessage()


@dataclass(slots=True)
class RequestHead:
    method: str
    target: bytes
    version: str
    headers: hdrs.Headers
    keep_alive: bool
    chunked: bool
    content_length: int | None
    expect_continue: bool

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    version: str
    headers: hdrs.Headers
    keep_alive: bool
    chunked: bool
    content_length: int | None


Event = RequestHead | ResponseHead | bytes | EndOfMessage

SUPPORTED_VERSIONS = frozenset({"1.0", "1.1"})
# RFC 9112 §3.2 / RFC 3986 §3.2.2: uri-host [ ":" port ]: an IP literal in brackets or a
# reg-name (unreserved, pct-encoded, sub-delims), which may be empty.
_HOST: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")


def complete_messages(events: list[Event]) -> list[Event]:
    """The events of the messages that ended before a fault. A head whose message broke
    (say, a Transfer-Encoding llhttp refuses after the head) must not be acted on."""
    for index in range(len(events) - 1, -1, -1):
        if events[index] is END:
            return events[: index + 1]
    return []


class _Parser:
    """What requests and responses share: collecting the head, counting its size."""

    def __init__(self, max_header_bytes: int, max_header_fields: int) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_header_fields = max_header_fields
        self._events: list[Event] = []
        self._fed = 0  # bytes given to the current feed()
        self._raw_head_size = 0  # bytes fed while a head was incomplete from the start
        self._next_head()
        self._in_head = False
        # True from a message's first byte to its end (a plain attribute: the server
        # asks on every read)
        self.in_message = False
        self._refusal: ProtocolError | None = None
        self._parser = self._new_parser()

    def _new_parser(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        raise NotImplementedError  # pragma: no cover - both subclasses define it

    def feed(self, data: bytes) -> list[Event]:
        events = self._events = []
        self._fed = len(data)
        continuing_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # llhttp stops after an upgrade (or CONNECT) request's head. Neither is
            # supported, so the message is treated as a plain one (the Upgrade field is
            # hop-by-hop and never forwarded) and parsing goes on with a fresh parser.
            self._check_upgrade(events)
            offset = upgrade.args[0]
            self._parser = self._new_parser()
            try:
                events.extend(self.feed(data[offset:]))
            except ProtocolError as later:
                later.events = events + later.events
                raise
            self._events = events
        except httptools.HttpParserError as exc:
            # httptools turns an exception raised in a callback into its own
            # HttpParserCallbackError; ours was kept aside in _refusal.
            refusal, self._refusal = self._refusal, None
            if refusal is None:
                reason = str(exc)
                invalid_version = reason == "Invalid HTTP version"
                refusal = VersionNotSupported(reason) if invalid_version else ProtocolError(reason)
            refusal.events = complete_messages(events)
            raise refusal from exc
        if self._in_head and continuing_head:
            # httptools buffers a half-received header value without calling back, so
            # the callbacks alone would let one endless header grow without bound. The
            # read in which a head starts is not counted (where in it the head starts is
            # unknown), so an unfinished head is held to the limit plus one read.
            self._raw_head_size += len(data)
            if self._raw_head_size > self.max_header_bytes:
                too_large = HeadersTooLarge(f"header block over {self.max_header_bytes} bytes")
                too_large.events = complete_messages(events)
                raise too_large
        return events

    def _check_upgrade(self, events: list[Event]) -> None:
        pass

    def _refuse(self, error: ProtocolError) -> NoReturn:
        """Raise from a callback: httptools hides the exception, so keep it for feed()."""
        self._refusal = error
        raise error

    def _next_head(self) -> None:
        """Ready for the next message's head (on_message_begin is left with one line:
        every callback is a Python call per message)."""
        self._headers: hdrs.Headers = []
        self._chunked = False  # the message's framing, noted by on_header
        self._length: int | None = None
        self._expect: bytes | None = None
        self._hosts: list[bytes] = []  # Host values, checked once the head is complete
        self._raw_head_size = 0

    def _check_size(self, start_line: int) -> None:
        """The header limits, for a head that may be over them (`_may_be_too_large`)."""
        size = start_line + sum(len(name) + len(value) + 4 for name, value in self._headers)
        if size > self.max_header_bytes:
            self._refuse(HeadersTooLarge(f"header block over {self.max_header_bytes} bytes"))
        if len(self._headers) > self.max_header_fields:
            self._refuse(HeadersTooLarge(f"more than {self.max_header_fields} header fields"))

    @property
    def _may_be_too_large(self) -> bool:
        """A head that began and ended in one read no larger than the size limit is within
        it: only a larger read, or a head over several, is counted."""
        return (
            self._raw_head_size > 0
            or self._fed > self.max_header_bytes
            or len(self._headers) > self.max_header_fields
        )

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._in_head = self.in_message = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        # The fields the core looks at, noted as they pass; the length test spares a
        # lower() for every other field.
        if len(name) in (4, 6, 14, 17):
            lowered = name.lower()
            if lowered == b"host":
                self._hosts.append(value)
            elif lowered == b"content-length":
                self._length = int(value)  # llhttp has checked the digits and duplicates
            elif lowered == b"transfer-encoding":
                self._chunked = True  # llhttp has checked that it ends in `chunked`
            elif lowered == b"expect":
                self._expect = value

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        self._events.append(END)

    def _head_complete(self) -> str:
        """Mark the head done and return its HTTP version, refusing all but 1.0 and 1.1."""
        self._in_head = False
        version: str = self._parser.get_http_version()
        if version not in SUPPORTED_VERSIONS:
            if version == "0.9":  # llhttp's reading of a start line with no version
                self._refuse(ProtocolError("start line without an HTTP version"))
            self._refuse(VersionNotSupported(f"HTTP/{version} is not supported"))
        return version


class RequestParser(_Parser):
    _parser: httptools.HttpRequestParser

    def __init__(
        self,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_header_fields: int = MAX_HEADER_FIELDS,
    ) -> None:
        super().__init__(max_header_bytes, max_header_fields)

    def _new_parser(self) -> httptools.HttpRequestParser:
        return httptools.HttpRequestParser(self)

    def _next_head(self) -> None:
        super()._next_head()
        self._target = b""

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_headers_complete(self) -> None:
        version = self._head_complete()
        if self._may_be_too_large:
            self._check_size(len(self._target) + 14)  # "GET " ... " HTTP/1.1\r\n" at least
        parser = self._parser
        chunked, length = self._chunked, self._length
        if chunked and version == "1.0":
            # RFC 9112 §6.1: a server receiving Transfer-Encoding in HTTP/1.0 ought to
            # treat the framing as faulty and close; refusing is the safe reading.
            self._refuse(ProtocolError("Transfer-Encoding in an HTTP/1.0 request"))
        hosts = self._hosts
        if len(hosts) != 1:
            # RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one in 1.0; two could
            # route the request one way here and another way behind us.
            if hosts or version == "1.1":
                self._refuse(ProtocolError(f"{len(hosts)} Host fields in the request"))
        elif _HOST.fullmatch(hosts[0]) is None:
            self._refuse(ProtocolError(f"invalid Host {hosts[0]!r}"))
        expect = self._expect
        self._events.append(
            RequestHead(
                method=parser.get_method().decode("ascii"),
                target=self._target,
                version=version,
                headers=self._headers,
                keep_alive=parser.should_keep_alive(),
                chunked=chunked,
                content_length=length,
                expect_continue=(
                    expect is not None and expect.lower() == b"100-continue" and version == "1.1"
                ),
            )
        )
        self._next_head()

    def _check_upgrade(self, events: list[Event]) -> None:
        if self._parser.get_method() == b"CONNECT":
            error = ProtocolError("CONNECT is not supported", status=405)
            error.events = events[:-2]  # its own head and end are not answered
            raise error


class ResponseParser(_Parser):
    """Parses the responses of one upstream connection. Call `expect_head_response()`
    before the response to a HEAD request: llhttp cannot know it has no body. Call
    `finish()` when the connection closes: a body without a length ends there."""

    _parser: httptools.HttpResponseParser

    def __init__(
        self,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_header_fields: int = MAX_HEADER_FIELDS,
    ) -> None:
        self._head_response = False
        self._until_close = False  # the current body has no length: it ends with the close
        self.surplus = False  # bytes came after a response to HEAD
        self._dropped: list[Event] = []
        super().__init__(max_header_bytes, max_header_fields)

    def feed(self, data: bytes) -> list[Event]:
        events = super().feed(data)
        if self._dropped:
            self.surplus = True
        return events

    def finish(self) -> list[Event]:
        """The connection closed. A response with neither Content-Length nor chunked
        framing ends here (RFC 9112 §6.3); any other message cut short stays incomplete,
        and its reader sees the connection closed. httptools does not expose llhttp's own
        `llhttp_finish()`, hence this."""
        if self.in_message and not self._in_head and self._until_close:
            self.in_message = False
            return [END]
        return []

    def _new_parser(self) -> httptools.HttpResponseParser:
        return httptools.HttpResponseParser(self)

    def expect_head_response(self) -> None:
        self._head_response = True

    def _next_head(self) -> None:
        super()._next_head()
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_headers_complete(self) -> None:
        version = self._head_complete()
        if self._may_be_too_large:
            self._check_size(len(self._reason) + 15)  # "HTTP/1.1 200 " ... "\r\n"
        parser = self._parser
        chunked, length = self._chunked, self._length
        status = parser.get_status_code()
        self._until_close = (
            not chunked and length is None and status >= 200 and status not in (204, 304)
        )
        self._events.append(
            ResponseHead(
                status=status,
                reason=self._reason,
                version=version,
                headers=self._headers,
                keep_alive=parser.should_keep_alive(),
                chunked=chunked,
                content_length=length,
            )
        )
        self._next_head()
        if self._head_response and status >= 200:
            # The response ends with its head. What llhttp reads after it in this feed
            # (a body some servers wrongly send to HEAD) is dropped, and the connection
            # is not reused (`surplus`, see client.py).
            self._head_response = False
            self.in_message = False
            self._events.append(END)
            self._events = self._dropped = []
            self._parser = self._new_parser()
