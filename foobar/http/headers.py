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


def parse_lines(lines: bytes) -> Headers:
    """Field lines ("Name: value\r\n" each, as a tier writes its added fields once) as
    a header list."""
    fields = []
    for line in lines.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            fields.append((name, value.strip()))
    return fields


def without(headers: Headers, names: Iterable[bytes]) -> Headers:
    drop = frozenset(names)
    return [(key, value) for key, value in headers if key.lower() not in drop]


# What a proxy sets on every request it forwards.
FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto"})
# What proxies set on requests, foobar's tiers among them (nginx's X-Real-IP and
# X-Forwarded-Host, RFC 7239's Forwarded): a request carrying one, or a hop-by-hop
# field, is rebuilt field by field rather than passed on as received.
SET_BY_PROXIES = FORWARDING | {b"x-forwarded-host", b"x-real-ip", b"forwarded"}
NOT_RELAYED = HOP_BY_HOP | SET_BY_PROXIES
# What makes a request's answer other than the whole resource's: its validators (RFC 9110
# §13.1) and Range (§14.2). A file server answers the others from its cache as they are.
CONDITIONAL = frozenset(
    {b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"range"}
)
_END_TO_END_DROP = HOP_BY_HOP | {b"content-length"}
_FORWARDING_DROP = _END_TO_END_DROP | FORWARDING


def end_to_end(headers: Headers) -> Headers:
    """`headers` less the hop-by-hop ones, including those the Connection field names, and
    less Content-Length: the sender rebuilds the framing for the next hop."""
    return _without_hop_by_hop(headers, _END_TO_END_DROP)[0]


def forwarding(headers: Headers, client_ip: str, scheme: str) -> Headers:
    """End-to-end `headers` with X-Forwarded-For appended and X-Forwarded-Proto set: what
    a proxy sends on."""
    kept, previous = _without_hop_by_hop(headers, _FORWARDING_DROP)
    client = client_ip.encode()
    kept.append((b"X-Forwarded-For", b", ".join([*previous, client]) if previous else client))
    kept.append((b"X-Forwarded-Proto", scheme.encode()))
    return kept


def _without_hop_by_hop(headers: Headers, drop: frozenset[bytes]) -> tuple[Headers, list[bytes]]:
    """`headers` less the `drop` set and the fields Connection names, in one pass (it runs
    for every proxied message), and the X-Forwarded-For values met on the way."""
    kept: Headers = []
    forwarded_for: list[bytes] = []
    named: set[bytes] = set()
    for name, value in headers:
        lowered = name.lower()
        if lowered in drop:
            if lowered == b"x-forwarded-for":
                forwarded_for.append(value)
            elif lowered == b"connection":
                named.update(part.strip().lower() for part in value.split(b","))
            continue
        kept.append((name, value))
    named -= HOP_BY_HOP
    if named:  # fields the sender declared hop-by-hop in Connection
        kept = [(name, value) for name, value in kept if name.lower() not in named]
    return kept, forwarded_for
