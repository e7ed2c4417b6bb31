"""Header lists, and what a proxy does to them: hop-by-hop removal and forwarding headers.

Headers are a list of `(name, value)` byte pairs in the order received, names as the peer
spelled them (HTTP/1.1 proxies preserve case and order); look-ups ignore case.
"""

from __future__ import annotations

from collections.abc import Iterable

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1 names Connection and the fields it lists; the rest are the classic
# hop-by-hop set (RFC 2616 §13.5.1) that nginx and HAProxy also strip.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def get(headers: Headers, name: bytes) -> bytes | None:
    """The last value of `name` (lower-case), or None."""
    found = None
    for key, value in headers:
        if key.lower() == name:
            found = value
    return found


def get_all(headers: Headers, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key.lower() == name]


def without(headers: Headers, names: Iterable[bytes]) -> Headers:
    drop = frozenset(names)
    return [(key, value) for key, value in headers if key.lower() not in drop]


_END_TO_END_DROP = HOP_BY_HOP | {b"content-length"}


def end_to_end(headers: Headers) -> Headers:
    """`headers` less the hop-by-hop ones, including those the Connection field names, and
    less Content-Length: the sender rebuilds the framing for the next hop. One pass, as
    `forwarding()`: it runs for every proxied response."""
    kept: Headers = []
    named: set[bytes] = set()
    for name, value in headers:
        lowered = name.lower()
        if lowered in _END_TO_END_DROP:
            if lowered == b"connection":
                named.update(part.strip().lower() for part in value.split(b","))
            continue
        kept.append((name, value))
    named -= HOP_BY_HOP
    if named:  # fields the sender declared hop-by-hop in Connection
        kept = [(name, value) for name, value in kept if name.lower() not in named]
    return kept


_FORWARDING_DROP = HOP_BY_HOP | {b"content-length", b"x-forwarded-for", b"x-forwarded-proto"}


def forwarding(headers: Headers, client_ip: str, scheme: str) -> Headers:
    """End-to-end `headers` with X-Forwarded-For appended and X-Forwarded-Proto set: what
    a proxy sends on. One pass over the headers: it runs for every proxied request."""
    kept: Headers = []
    previous: list[bytes] = []
    named: set[bytes] = set()
    for name, value in headers:
        lowered = name.lower()
        if lowered in _FORWARDING_DROP:
            if lowered == b"x-forwarded-for":
                previous.append(value)
            elif lowered == b"connection":
                named.update(part.strip().lower() for part in value.split(b","))
            continue
        kept.append((name, value))
    named -= HOP_BY_HOP
    if named:  # fields the client declared hop-by-hop in Connection
        kept = [(name, value) for name, value in kept if name.lower() not in named]
    client = client_ip.encode()
    kept.append((b"X-Forwarded-For", b", ".join([*previous, client]) if previous else client))
    kept.append((b"X-Forwarded-Proto", scheme.encode()))
    return kept
