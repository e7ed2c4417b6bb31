"""What a proxy does to headers: hop-by-hop fields dropped, forwarding fields set."""

from __future__ import annotations

import pytest

from foobar.http import headers as hdrs
from foobar.http.forward import _without_field, relayed_head
from foobar.http.parser import RequestHead, RequestParser


def test_hop_by_hop_and_connection_named_fields_are_dropped() -> None:
    received = [
        (b"Host", b"www.foobar.com"),
        (b"Connection", b"keep-alive, X-Secret-Hop"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Secret-Hop", b"1"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-T"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"websocket"),
        (b"Proxy-Authorization", b"Basic x"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"Content-Length", b"5"),
        (b"Accept", b"*/*"),
    ]
    assert hdrs.end_to_end(received) == [(b"Host", b"www.foobar.com"), (b"Accept", b"*/*")]


def test_forwarding_appends_client_and_sets_proto() -> None:
    received = [
        (b"Host", b"a"),
        (b"X-Forwarded-For", b"203.0.113.1"),
        (b"x-forwarded-for", b"198.51.100.2"),
        (b"X-Forwarded-Proto", b"https"),
    ]
    assert hdrs.forwarding(received, "192.0.2.7", "http") == [
        (b"Host", b"a"),
        (b"X-Forwarded-For", b"203.0.113.1, 198.51.100.2, 192.0.2.7"),
        (b"X-Forwarded-Proto", b"http"),
    ]


def test_lookups_ignore_case() -> None:
    headers = [(b"Content-Type", b"a"), (b"content-type", b"b")]
    assert hdrs.get(headers, b"content-type") == b"b"
    assert hdrs.get_all(headers, b"content-type") == [b"a", b"b"]


STATUS_LINE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"


# Field lines, and what is left of them when the head goes on as received less its
# Connection field; None: it has another hop-by-hop field, so it is rebuilt. The same
# rules for an answer (`relayed_head`) and for a request (`RequestHead.plain_connection`).
CONNECTION_FIELDS = [
    (b"", b""),
    (b"Connection: keep-alive\r\n", b""),
    (b"CONNECTION:  Close \t\r\n", b""),
    (b"Connection: keep-alive\r\nX-A: 1\r\n", b"X-A: 1\r\n"),
    (b"X-A: 1\r\nConnection: close\r\nX-B: 2\r\n", b"X-A: 1\r\nX-B: 2\r\n"),
    (b"X-A: 1\r\nconnection:close\r\n", b"X-A: 1\r\n"),
    (b"X-Connection: keep-alive\r\n", b"X-Connection: keep-alive\r\n"),
    (b"Connection: keep-alive\r\nX-A: 1\r\nKeep-Alive: timeout=5\r\n", None),
    (b"Keep-Alive: timeout=5\r\nConnection: keep-alive\r\n", None),
    (b"Connection: keep-alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\n", None),
    (b"Connection: keep-alive\r\nConnection: close\r\n", None),
    (b"Keep-Alive: timeout=5\r\n", None),
    (b"Connection: close\r\nTE: trailers\r\n", None),
    (b"Upgrade: h2c\r\nConnection: close\r\n", None),
]


@pytest.mark.parametrize(
    ("fields", "relayed"),
    [*CONNECTION_FIELDS, (b"transfer-encoding: chunked\r\n", None)],
)
def test_an_answer_head_is_relayed_as_received_less_its_connection_field(
    fields: bytes, relayed: bytes | None
) -> None:
    """The fast path's answer: its Connection field off when it names no other field, the
    route's fields added; rebuilt (None) when it has any other hop-by-hop field."""
    added = b"X-Foobar-LB: www\r\n"
    expected = None if relayed is None else STATUS_LINE + relayed + added
    assert relayed_head(STATUS_LINE + fields + b"\r\n", added) == expected


@pytest.mark.parametrize(("fields", "relayed"), CONNECTION_FIELDS)
def test_a_request_head_is_relayed_as_received_less_a_plain_connection_field(
    fields: bytes, relayed: bytes | None
) -> None:
    """A browser's Connection field (keep-alive or close) is the client connection's
    own: the head goes on as received without its line."""
    request_line = b"GET / HTTP/1.1\r\nHost: a\r\n"
    raw = request_line + fields + b"\r\n"
    [head, _] = RequestParser().feed(raw)
    assert isinstance(head, RequestHead)
    if relayed is None:
        assert (head.relayable, head.plain_connection) == (False, None)
        return
    assert head.relayable
    name = head.plain_connection
    assert (raw if name is None else _without_field(raw, name)) == request_line + relayed + b"\r\n"


@pytest.mark.parametrize(
    ("field", "relayable"),
    [
        (b"Accept: */*", True),
        (b"X-Forwarded-Host: a", False),
        (b"x-real-ip: 10.0.0.1", False),
        (b"Forwarded: for=10.0.0.1", False),
        (b"X-Forwarded-For: 10.0.0.1", False),
        (b"Connection: close", True),  # its line is cut (plain_connection)
        (b"Connection: close, X-A", False),
        (b"TE: trailers", False),
        (b"Proxy-Authorization: Basic x", False),
    ],
)
def test_a_request_head_with_a_field_proxies_set_or_hop_by_hop_is_rebuilt(
    field: bytes, relayable: bool
) -> None:
    parser = RequestParser()
    [head, _] = parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n%s\r\n\r\n" % field)
    assert isinstance(head, RequestHead)
    assert head.relayable is relayable


@pytest.mark.parametrize(
    "field",
    [
        b'If-None-Match: "v1"',
        b"if-modified-since: Tue, 01 Dec 2026 10:00:00 GMT",
        b"IF-MATCH: *",
        b"If-Unmodified-Since: Tue, 01 Dec 2026 10:00:00 GMT",
        b"Range: bytes=0-1",
    ],
)
def test_a_validator_or_a_range_makes_the_head_conditional(field: bytes) -> None:
    """What the file server answers from its cache as it is, and what not: the parser
    notes it as the field passes, by any spelling."""
    parser = RequestParser()
    [head, _] = parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n%s\r\n\r\n" % field)
    assert isinstance(head, RequestHead) and head.conditional
    [head, _] = parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Range: 1\r\n\r\n")
    assert isinstance(head, RequestHead) and not head.conditional
    # a name cut between two reads
    assert parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n%s" % field[:3]) == []
    [head, _] = parser.feed(b"%s\r\n\r\n" % field[3:])
    assert isinstance(head, RequestHead) and head.conditional
