"""The PROXY protocol (HAProxy's, versions 1 and 2): a preamble a proxy sends before the
connection's own bytes, carrying the original client's address.

    build(1 or 2, source, destination) -> bytes     what `send-proxy` writes
    parse(buffer) -> (consumed, source) or None     what `accept-proxy` reads; None: more bytes
    Preamble().feed(data)                           the same across reads
"""

from __future__ import annotations

import ipaddress
import struct

from foobar.http.errors import ProtocolError

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the spec's longest v1 line, CRLF included
Address = tuple[str, int]


def build(version: int, source: Address, destination: Address) -> bytes:
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:  # a v4 client on a v6 socket: say it in v6
        src, dst = _as_v6(src), _as_v6(dst)
    if version == 1:
        family = "TCP4" if src.version == 4 else "TCP6"
        return f"PROXY {family} {src} {dst} {source[1]} {destination[1]}\r\n".encode()
    family_protocol = 0x11 if src.version == 4 else 0x21  # AF_INET/AF_INET6, STREAM
    addresses = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return (
        V2_SIGNATURE
        + bytes([0x21, family_protocol])
        + struct.pack("!H", len(addresses))
        + addresses
    )


def _as_v6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(f"::ffff:{address}")


def parse(buffer: bytes) -> tuple[int, Address | None] | None:
    """(bytes consumed, the client's address or None for LOCAL/UNKNOWN), or None when
    more bytes are needed. ProtocolError when the preamble is missing or malformed."""
    if buffer.startswith(b"PROXY "):
        end = buffer.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buffer) >= V1_MAX:
                raise ProtocolError("PROXY v1 line too long")
            return None
        parts = buffer[:end].split(b" ")
        if parts[1:2] == [b"UNKNOWN"]:
            return end + 2, None
        if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
            raise ProtocolError("malformed PROXY v1 line")
        try:
            ipaddress.ip_address(parts[2].decode())
            return end + 2, (parts[2].decode(), int(parts[4]))
        except ValueError as exc:
            raise ProtocolError("malformed PROXY v1 address") from exc
    if len(buffer) < 16:
        if V2_SIGNATURE.startswith(buffer[:12]) or b"PROXY ".startswith(buffer[:6]):
            return None
        raise ProtocolError("expected a PROXY protocol preamble")
    if not buffer.startswith(V2_SIGNATURE):
        raise ProtocolError("expected a PROXY protocol preamble")
    version_command, family = buffer[12], buffer[13]
    length = struct.unpack("!H", buffer[14:16])[0]
    if version_command >> 4 != 2:
        raise ProtocolError("unknown PROXY protocol version")
    if len(buffer) < 16 + length:
        return None
    body = buffer[16 : 16 + length]
    consumed = 16 + length
    if version_command & 0x0F == 0:  # LOCAL: a health check from the proxy itself
        return consumed, None
    if family == 0x11 and length >= 12:
        return consumed, (str(ipaddress.IPv4Address(body[:4])), struct.unpack("!H", body[8:10])[0])
    if family == 0x21 and length >= 36:
        return consumed, (
            str(ipaddress.IPv6Address(body[:16])),
            struct.unpack("!H", body[32:34])[0],
        )
    return consumed, None


class Preamble:
    """The preamble of one connection as its bytes arrive: `feed()` returns None until it
    is complete, then the bytes that followed it; `source` is then the client's address
    (None for LOCAL/UNKNOWN). ProtocolError when it is malformed."""

    def __init__(self) -> None:
        self._buffer = b""
        self.source: Address | None = None

    def feed(self, data: bytes) -> bytes | None:
        self._buffer += data
        parsed = parse(self._buffer)
        if parsed is None:
            return None
        consumed, self.source = parsed
        rest, self._buffer = self._buffer[consumed:], b""
        return rest
