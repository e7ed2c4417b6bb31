"""HTTP/1.1 message parsing with no I/O: feed bytes, get events.

The only module that imports httptools (llhttp, Node's parser). llhttp is strict by default
and already refuses the request-smuggling shapes: Content-Length with Transfer-Encoding,
two Content-Length fields, a Transfer-Encoding that does not end in `chunked`, bare LF,
whitespace before a colon, obs-fold. This layer adds what llhttp leaves to its caller: the
header limits, Host (RFC 9112 §3.2), HTTP versions other than 1.0/1.1, upgrade requests,
and bodiless responses to HEAD.

Every llhttp callback is a Python call, and a call costs more than most of what it does,
so each message gets as few as its use needs. A request's fields come one callback each
(every tier reads them). A response is the proxies' to relay: its head is kept as the
bytes received (`ResponseHead.raw`), read for what the core needs with a few searches,
and split into fields only if somebody asks for them; an answer that arrives whole in
one read, framed by its Content-Length (a keep-alive upstream's common answer), is read
by `ResponseParser.whole` with two callbacks and no head object.

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
from abc import ABC, abstractmethod
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


@dataclass
class RequestHead:
    # Not slotted: the parser fills a head in as its fields pass, and leaves the fields
    # most requests don't carry at their class defaults (a store less for each).
    method: str
    target: bytes
    version: str
    headers: hdrs.Headers
    keep_alive: bool
    chunked: bool = False
    content_length: int | None = None
    expect_continue: bool = False
    host: bytes | None = None  # the one Host field's value (the parser checked there is one)
    # no hop-by-hop field and none that proxies set (headers.NOT_RELAYED), except a
    # plain Connection field: a proxy may pass the head on as received, that field's
    # line cut
    relayable: bool = False
    # in a relayable head, the name as received of its one Connection field, which only
    # says keep-alive or close (a browser's every request): it belongs to this
    # connection alone; None otherwise
    plain_connection: bytes | None = None
    # what the access log shows, noted as the fields pass (nginx's headers_in does so)
    referer: bytes | None = None
    user_agent: bytes | None = None
    # a validator or a Range field (headers.CONDITIONAL): the answer may be other than the
    # whole resource's
    conditional: bool = False

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class ResponseHead:
    """A response's head: what the core acts on, and the head as received (`raw`: status
    line, fields and the empty line). The rest is read from `raw` only when asked for: a
    proxy relaying the bytes needs the status and little else."""

    __slots__ = ("_headers", "keep_alive", "raw", "status")

    def __init__(self, status: int, raw: bytes, keep_alive: bool = True) -> None:
        self.status = status
        self.raw = raw
        self.keep_alive = keep_alive
        self._headers: hdrs.Headers | None = None

    @property
    def reason(self) -> bytes:
        status_line = self.raw[: self.raw.find(b"\r\n")]
        parts = status_line.split(b" ", 2)
        return parts[2] if len(parts) > 2 else b""

    @property
    def content_length(self) -> int | None:
        found = _CONTENT_LENGTH.search(self.raw)  # llhttp checked it and refused two
        return None if found is None else int(found[1])

    @property
    def chunked(self) -> bool:
        return _TRANSFER_ENCODING.search(self.raw) is not None  # llhttp: ends in chunked

    @property
    def headers(self) -> hdrs.Headers:
        """The fields as (name, value) pairs, in order; llhttp has checked their syntax."""
        headers = self._headers
        if headers is None:
            headers = self._headers = []
            for line in self.raw.split(b"\r\n")[1:-2]:
                name, _, value = line.partition(b":")
                headers.append((name, value.strip(b" \t")))
        return headers

    def __repr__(self) -> str:
        return f"ResponseHead({self.status}, {self.raw!r})"


Event = RequestHead | ResponseHead | bytes | EndOfMessage

SUPPORTED_VERSIONS = frozenset({"1.0", "1.1"})
_STATUS_LINE_VERSIONS: Final = frozenset({b"HTTP/1.1", b"HTTP/1.0"})
# RFC 9112 §3.2 / RFC 3986 §3.2.2: uri-host [ ":" port ]: an IP literal in brackets or a
# reg-name (unreserved, pct-encoded, sub-delims), which may be empty.
_HOST: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
# What on_header notes of a request's fields, by lower-case name: Host, the framing
# fields, the fields that keep a head from being relayed as received, the access log's
# two, Connection, and the validators and Range (nginx's headers_in notes them too).
_HOST_FIELD, _FRAMING_FIELD, _NOT_RELAYED_FIELD, _CONNECTION_FIELD = 1, 2, 4, 8
_REFERER_FIELD, _USER_AGENT_FIELD, _CONDITIONAL_FIELD = 16, 32, 64
_NOTED: Final = {name: _NOT_RELAYED_FIELD for name in hdrs.NOT_RELAYED}
_NOTED.update(dict.fromkeys(hdrs.CONDITIONAL, _CONDITIONAL_FIELD))
_NOTED[b"connection"] = _CONNECTION_FIELD
# A Connection field's values that name no other field (lower-case; llhttp has taken
# off the spaces before the value, not those after it)
_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close"})
_NOTED[b"host"] = _HOST_FIELD
_NOTED[b"content-length"] = _NOTED[b"expect"] = _FRAMING_FIELD
_NOTED[b"transfer-encoding"] = _FRAMING_FIELD | _NOT_RELAYED_FIELD
_NOTED[b"referer"], _NOTED[b"user-agent"] = _REFERER_FIELD, _USER_AGENT_FIELD
# The same by name as clients spell it (Title-Case or lower-case), with the fields they
# send most that are not noted (0): on_header finds a name here without lower-casing it
# (150 instructions a field less); another spelling is lower-cased and looked up again.
_USUAL_FIELDS: Final = (
    b"accept accept-encoding accept-language authorization cache-control content-type "
    b"cookie dnt origin pragma priority sec-ch-ua sec-ch-ua-mobile sec-ch-ua-platform "
    b"sec-fetch-dest sec-fetch-mode sec-fetch-site sec-fetch-user upgrade-insecure-requests"
).split()
_NOTED_AS_SENT: Final = {
    spelling: kind
    for name, kind in (_NOTED | dict.fromkeys(_USUAL_FIELDS, 0)).items()
    for spelling in (name, b"-".join(part.capitalize() for part in name.split(b"-")))
} | {b"TE": _NOTED[b"te"], b"DNT": 0, b"X-Real-IP": _NOTED[b"x-real-ip"]}
# The framing fields of a response head, found in its bytes (whole field names: llhttp
# refused bare LFs, so every "\r\n" starts a field line).
_CONTENT_LENGTH: Final = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)", re.IGNORECASE)
_TRANSFER_ENCODING: Final = re.compile(rb"\r\ntransfer-encoding:", re.IGNORECASE)


class _MethodNames(dict[bytes, str]):
    """llhttp's method names as str, decoded once each (llhttp knows a fixed few): a
    look-up costs a third less than the decoding."""

    def __missing__(self, method: bytes) -> str:
        name = self[method] = method.decode("ascii")
        return name


_METHOD_NAMES: Final = _MethodNames()
# An instance without its __init__ (the request head is filled in field by field, see
# RequestParser.on_message_begin)
_new_object: Final = object.__new__
# What llhttp raises when it stops in the middle of what it was fed.
_STOPS: Final = (httptools.HttpParserUpgrade, httptools.HttpParserError)


def complete_messages(events: list[Event]) -> list[Event]:
    """The events of the messages that ended before a fault. A head whose message broke
    (say, a Transfer-Encoding llhttp refuses after the head) must not be acted on."""
    for index in range(len(events) - 1, -1, -1):
        if events[index] is END:
            return events[: index + 1]
    return []


class _Parser(ABC):
    """What requests and responses share: running llhttp, translating its errors."""

    def __init__(self, max_header_bytes: int, max_header_fields: int) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_header_fields = max_header_fields
        self._events: list[Event] = []
        self._in_head = False
        # True from a message's first byte to its end (a plain attribute: the server
        # asks on every read)
        self.in_message = False
        self._refusal: ProtocolError | None = None
        self._parser = self._new_parser()

    @abstractmethod
    def _new_parser(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser: ...

    @abstractmethod
    def feed(self, data: bytes) -> list[Event]:
        """The events of `data` (see the module's docstring)."""

    def _stopped(self, stop: Exception, data: bytes, events: list[Event]) -> None:
        """llhttp stopped in `data` (each `feed` runs it, and calls this when it raises):
        after an upgrade request's head, parsing goes on; an error is raised as ours."""
        if isinstance(stop, httptools.HttpParserUpgrade):
            # llhttp stops after an upgrade (or CONNECT) request's head. Neither is
            # supported, so the message is treated as a plain one (the Upgrade field is
            # hop-by-hop and never forwarded) and parsing goes on with a fresh parser.
            self._check_upgrade(events)
            offset = stop.args[0]
            self._parser = self._new_parser()
            try:
                events.extend(self.feed(data[offset:]))
            except ProtocolError as later:
                later.events = events + later.events
                raise
            self._events = events
            return
        # httptools turns an exception raised in a callback into its own
        # HttpParserCallbackError; ours was kept aside in _refusal.
        refusal, self._refusal = self._refusal, None
        if refusal is None:
            reason = str(stop)
            invalid_version = reason == "Invalid HTTP version"
            refusal = VersionNotSupported(reason) if invalid_version else ProtocolError(reason)
        refusal.events = complete_messages(events)
        raise refusal from stop

    def _check_upgrade(self, events: list[Event]) -> None:  # noqa: B027 - optional hook
        """Refuse an upgrade the parser cannot treat as a plain message (requests: CONNECT)."""

    def _refuse(self, error: ProtocolError) -> NoReturn:
        """Raise from a callback: httptools hides the exception, so keep it for feed()."""
        self._refusal = error
        raise error

    def _too_large(self, events: list[Event]) -> NoReturn:
        too_large = HeadersTooLarge(f"header block over {self.max_header_bytes} bytes")
        too_large.events = complete_messages(events)
        raise too_large

    def _checked_version(self) -> str:
        """The message's HTTP version from llhttp: 1.0 or 1.1, others are refused."""
        version: str = self._parser.get_http_version()
        if version not in SUPPORTED_VERSIONS:
            self._refuse_version(version)
        return version

    def _refuse_version(self, version: str) -> NoReturn:
        """Refuse every HTTP version but 1.0 and 1.1."""
        if version == "0.9":  # llhttp's reading of a start line with no version
            self._refuse(ProtocolError("start line without an HTTP version"))
        self._refuse(VersionNotSupported(f"HTTP/{version} is not supported"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._in_head = self.in_message = True

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        self._events.append(END)


class RequestParser(_Parser):
    _parser: httptools.HttpRequestParser

    def __init__(
        self,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_header_fields: int = MAX_HEADER_FIELDS,
        head_type: type[RequestHead] = RequestHead,
    ) -> None:
        # what the heads are made as: a server's parser makes its requests (a subclass)
        self._head_type = head_type
        self._fed = 0  # bytes given to the current feed()
        self._valid_host: bytes | None = None  # the last Host checked: most repeat it
        # emptied once a head is complete, and only if it used them (most leave them be)
        self._framing = None
        self._raw_head_size = 0
        super().__init__(max_header_bytes, max_header_fields)

    def _new_parser(self) -> httptools.HttpRequestParser:
        return httptools.HttpRequestParser(self)

    def feed(self, data: bytes) -> list[Event]:
        events = self._events = []
        self._fed = len(data)
        continuing_head = self._in_head
        try:
            self._parser.feed_data(data)
        except _STOPS as stop:
            self._stopped(stop, data, events)
        if self._in_head and continuing_head:
            # httptools buffers a half-received header value without calling back, so
            # the callbacks alone would let one endless header grow without bound. The
            # read in which a head starts is not counted (where in it the head starts is
            # unknown), so an unfinished head is held to the limit plus one read.
            self._raw_head_size += len(data)
            if self._raw_head_size > self.max_header_bytes:
                self._too_large(events)
        return events

    # What a request's head is gathered in, from its first byte (on_message_begin): the
    # head itself, filled in as its fields pass (Host, Referer, User-Agent, relayable,
    # conditional), and what is checked once it is complete
    _head: RequestHead
    _target: bytes
    _headers: hdrs.Headers
    # Content-Length, Transfer-Encoding and Expect as on_header met them (lower-case
    # names): most requests have none, so none is made
    _framing: dict[bytes, bytes] | None
    _raw_head_size: int  # bytes fed while the head was incomplete from the start

    def on_message_begin(self) -> None:
        self._in_head = self.in_message = True
        # made without the dataclass's __init__ (a call frame less per request); every
        # field without a default is set by on_headers_complete
        head = self._head = _new_object(self._head_type)
        head.relayable = True
        self._target = b""
        self._headers = []

    def _check_size(self) -> None:
        """The header limits, for a head that began in a read larger than the size limit
        or went on over several (one read no larger than it holds a head within it)."""
        headers = self._headers
        size = len(self._target) + 14 + sum(len(name) + len(value) + 4 for name, value in headers)
        if size > self.max_header_bytes:
            self._refuse(HeadersTooLarge(f"header block over {self.max_header_bytes} bytes"))

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        # the fields the core looks at, noted as they pass (most are none of them)
        noted = _NOTED_AS_SENT.get(name)
        if noted is None:
            noted = _NOTED_AS_SENT.get(name.lower())
        if not noted:
            return
        if noted == _HOST_FIELD:
            if self._head.host is not None:
                # RFC 9112 §3.2: exactly one Host; two could route the request one way
                # here and another way behind us.
                self._refuse(ProtocolError("2 Host fields in the request"))
            self._head.host = value
            return
        if noted == _REFERER_FIELD:
            self._head.referer = value
            return
        if noted == _USER_AGENT_FIELD:
            self._head.user_agent = value
            return
        if noted == _CONDITIONAL_FIELD:
            self._head.conditional = True
            return
        if noted == _CONNECTION_FIELD:
            head = self._head
            first_and_relayable = head.relayable and head.plain_connection is None
            if first_and_relayable and value.rstrip(b" \t").lower() in _PLAIN_CONNECTION:
                head.plain_connection = name
                return
            noted = _NOT_RELAYED_FIELD  # two, or one naming other fields: rebuilt
        if noted & _NOT_RELAYED_FIELD:
            self._head.relayable = False
            self._head.plain_connection = None
        if noted & _FRAMING_FIELD:
            if self._framing is None:
                self._framing = {}
            self._framing[name.lower()] = value

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        head = self._head
        keep_alive = parser.should_keep_alive()
        if keep_alive and head.relayable and head.plain_connection is None:
            # No Connection field (that would have set plain_connection or cleared
            # relayable), and kept alive: llhttp keeps such a request alive only in
            # HTTP/1.1 (of the versions it reads, 0.9, 1.0, 1.1 and 2.0), so its version
            # accessor, which formats a string (2.2k instructions a request, measured
            # with and without it), is asked only of the others.
            version = "1.1"
        else:
            version = parser.get_http_version()
            if version not in SUPPORTED_VERSIONS:
                self._refuse_version(version)
        headers = self._headers
        if self._raw_head_size or self._fed > self.max_header_bytes:
            self._check_size()
            self._raw_head_size = 0
        if len(headers) > self.max_header_fields:
            self._refuse(HeadersTooLarge(f"more than {self.max_header_fields} header fields"))
        framing = self._framing
        if framing is not None:
            self._framing = None
            head.content_length, head.chunked, head.expect_continue = self._framing_of(
                framing, version
            )
        host = head.host
        if host is None:
            if version == "1.1":  # RFC 9112 §3.2: HTTP/1.1 requires Host
                self._refuse(ProtocolError("0 Host fields in the request"))
        elif host != self._valid_host:
            if _HOST.fullmatch(host) is None:
                self._refuse(ProtocolError(f"invalid Host {host!r}"))
            self._valid_host = host
        head.method = _METHOD_NAMES[parser.get_method()]
        head.target = self._target
        head.version = version
        head.headers = headers
        head.keep_alive = keep_alive
        self._events.append(head)

    def _framing_of(
        self, framing: dict[bytes, bytes], version: str
    ) -> tuple[int | None, bool, bool]:
        """(Content-Length, chunked, expects 100-continue)."""
        length = framing.get(b"content-length")
        chunked = b"transfer-encoding" in framing  # llhttp: it ends in `chunked`
        if chunked and version == "1.0":
            # RFC 9112 §6.1: a server receiving Transfer-Encoding in HTTP/1.0 ought to
            # treat the framing as faulty and close; refusing is the safe reading.
            self._refuse(ProtocolError("Transfer-Encoding in an HTTP/1.0 request"))
        expect = framing.get(b"expect", b"").lower() == b"100-continue" and version == "1.1"
        # llhttp has checked the length's digits and refused two of them
        return None if length is None else int(length), chunked, expect

    def _check_upgrade(self, events: list[Event]) -> None:
        if self._parser.get_method() == b"CONNECT":
            error = ProtocolError("CONNECT is not supported", status=405)
            error.events = events[:-2]  # its own head and end are not answered
            raise error


class _WholeAnswer:
    """The llhttp run behind `ResponseParser.whole`: the body it read, and the last
    message's keep-alive, which llhttp forgets once the message is complete."""

    __slots__ = ("body", "keep_alive", "parser")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.body = b""
        self.keep_alive: bool | None = None  # None until a message completes

    def on_body(self, body: bytes) -> None:
        self.body = body  # once: a length-framed body in one read is one span

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()


def _until_close(head: ResponseHead) -> bool:
    """Does this response's body end with the connection (RFC 9112 §6.3: neither a
    length nor chunked framing, and a status that has a body)?"""
    status = head.status
    if status < 200 or status in (204, 304):
        return False
    return head.content_length is None and not head.chunked


class ResponseParser(_Parser):
    """Parses the responses of one upstream connection. Call `expect_head_response()`
    before the response to a HEAD request: llhttp cannot know it has no body. Call
    `finish()` when the connection closes: a body without a length ends there.

    A response's head is cut from the bytes received: the connection carries one request
    at a time, so a head starts where the last read that was not a message's began, or
    right after an interim (1xx) head."""

    _parser: httptools.HttpResponseParser

    def __init__(
        self,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_header_fields: int = MAX_HEADER_FIELDS,
    ) -> None:
        self._head_response = False
        self._last_head: ResponseHead | None = None
        self._pending = b""  # the bytes from the current head's first, while it is read
        self.surplus = False  # bytes came after a response to HEAD
        self._dropped: list[Event] = []
        super().__init__(max_header_bytes, max_header_fields)
        self._whole = _WholeAnswer()

    def whole(self, data: bytes) -> tuple[int, bytes, bytes, bool] | None:
        """`data` read as one whole final answer with nothing before or after it:
        (status, head, body, keep-alive), the head as received with its empty line. None
        when it is not one (part of one, chunked, interim, to HEAD, after an unfinished
        message, malformed...): `feed(data)` then reads it, with no state changed. The
        common answer of a keep-alive upstream, read by llhttp with two callbacks instead
        of `feed`'s four and a head object, and the same checks made on the bytes."""
        if self.in_message or self._head_response or data[:8] not in _STATUS_LINE_VERSIONS:
            return None
        end = data.find(b"\r\n\r\n") + 4
        if end < 4 or end > self.max_header_bytes:
            return None
        if end > 4 * self.max_header_fields and (
            data.count(b"\r\n", 0, end) - 2 > self.max_header_fields
        ):
            return None
        answer = self._whole
        answer.body, answer.keep_alive = b"", None
        try:
            answer.parser.feed_data(data)
        except _STOPS:
            answer.parser = httptools.HttpResponseParser(answer)  # it stopped: start anew
            return None
        body = answer.body
        # A message ended, and its body (if any) is the rest of the read: so nothing came
        # after it, not even the empty lines llhttp skips, and it was length-framed (a
        # chunked body's framing makes the read longer). (A 101 never gets here: llhttp
        # stops at it, as at an upgrade.)
        if (
            answer.keep_alive is None
            or end + len(body) != len(data)
            or (status := answer.parser.get_status_code()) < 200
        ):
            answer.parser = httptools.HttpResponseParser(answer)  # mid-message, or spent
            return None
        return status, data[:end], body, answer.keep_alive

    def _new_parser(self) -> httptools.HttpResponseParser:
        return httptools.HttpResponseParser(self)

    def feed(self, data: bytes) -> list[Event]:
        if not self.in_message:
            self._pending = data
        elif self._in_head:
            self._pending += data
        events = self._events = []
        try:
            self._parser.feed_data(data)
        except _STOPS as stop:
            self._stopped(stop, data, events)
        if self._in_head and len(self._pending) > self.max_header_bytes:
            self._too_large(events)
        if self._dropped:
            self.surplus = True
        return events

    def _refuse_head(self, end: int) -> NoReturn:
        """A head that did not start where a response may, or is over the size limit."""
        if end < 4:  # its first byte was not where a response may start
            self._refuse(ProtocolError("response after the end of the answer"))
        self._refuse(HeadersTooLarge(f"header block over {self.max_header_bytes} bytes"))

    def finish(self) -> list[Event]:
        """The connection closed. A response with neither Content-Length nor chunked
        framing ends here (RFC 9112 §6.3); any other message cut short stays incomplete,
        and its reader sees the connection closed. httptools does not expose llhttp's own
        `llhttp_finish()`, hence this."""
        head = self._last_head
        if self.in_message and not self._in_head and head is not None and _until_close(head):
            self.in_message = False
            return [END]
        return []

    def expect_head_response(self) -> None:
        self._head_response = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        pending = self._pending
        # the version checked on the status line (llhttp's accessor formats a string, 140
        # ns here); llhttp is asked for the versions that are not 1.0 or 1.1, to refuse them
        if pending[:8] not in _STATUS_LINE_VERSIONS:
            self._checked_version()
        end = pending.find(b"\r\n\r\n") + 4
        if not 4 <= end <= self.max_header_bytes:
            self._refuse_head(end)
        raw = pending[:end]
        # a field line takes 4 bytes at least: a short head can't have too many
        if end > 4 * self.max_header_fields and raw.count(b"\r\n") - 2 > self.max_header_fields:
            self._refuse(HeadersTooLarge(f"more than {self.max_header_fields} header fields"))
        parser = self._parser
        status = parser.get_status_code()
        # an interim answer's successor starts right after it; a final one's body follows
        self._pending = pending[end:] if status < 200 else b""
        head = ResponseHead(status, raw, parser.should_keep_alive())
        self._last_head = head
        self._events.append(head)
        if self._head_response and status >= 200:
            # The response ends with its head. What llhttp reads after it in this feed
            # (a body some servers wrongly send to HEAD) is dropped, and the connection
            # is not reused (`surplus`, see client.py).
            self._head_response = False
            self.in_message = False
            self._events.append(END)
            self._events = self._dropped = []
            self._parser = self._new_parser()
