"""The HTTP part of the FoobarError tree (drawn in `foobar.errors`).

Each error carries the status the peer should get, as h11's `error_status_hint` does, so
the server turns any of them into a response without a table of its own.
"""

from __future__ import annotations

from typing import Any

from foobar.errors import FoobarError


class HTTPError(FoobarError):
    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class ProtocolError(HTTPError):
    """A peer sent a message HTTP/1.1 does not allow; the connection cannot be trusted.
    `events` holds what the parser produced before the fault."""

    status = 400
    events: list[Any] = []


class HeadersTooLarge(ProtocolError):
    status = 431


class VersionNotSupported(ProtocolError):
    status = 505


class BodyTooLarge(HTTPError):
    status = 413


class RequestTimeout(HTTPError):
    status = 408


class UpstreamError(HTTPError):
    """An upstream server failed. `response_started` tells whether any byte of its
    response arrived, which decides whether a request may be retried elsewhere."""

    status = 502
    response_started = False


class UpstreamConnectError(UpstreamError):
    """Refused or unreachable: no byte of the request reached the server."""


class UpstreamClosed(UpstreamError):
    """Reset or closed before the response was complete."""


class UpstreamProtocolError(UpstreamError):
    """The upstream answered with something that is not HTTP/1.1."""


class UpstreamTimeout(UpstreamError):
    status = 504


class ConnectTimeout(UpstreamTimeout, UpstreamConnectError):
    """No connection within the connect timeout; nothing was sent."""


class ReadTimeout(UpstreamTimeout):
    """The upstream went silent for longer than the read timeout."""


class ConnectionClosed(HTTPError):
    """The client went away mid-request. 499 is nginx's code for it; nobody receives it."""

    status = 499
