"""What a proxy does to headers: hop-by-hop fields dropped, forwarding fields set."""

from __future__ import annotations

from foobar.http import headers as hdrs


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
