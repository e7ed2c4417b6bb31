"""RFC 9112 §3.2's Host rules and the header-field count, as the parser applies them for
every tier (a table, no sockets), and as a server answers them."""

from __future__ import annotations

import dataclasses

import pytest

from foobar.http.errors import HeadersTooLarge, ProtocolError
from foobar.http.parser import RequestHead, RequestParser
from foobar.http.server import Request, Response, Server
from tests.conftest import RawClient


@pytest.mark.parametrize(
    "head,error",
    [
        (b"GET / HTTP/1.1\r\nHost: www.foobar.com\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: www.foobar.com:8443\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: \r\n", None),  # empty: allowed (no authority)
        (b"GET / HTTP/1.0\r\n", None),  # HTTP/1.0 may leave it out
        (b"GET / HTTP/1.1\r\n", ProtocolError),
        (b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n", ProtocolError),
        (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n", ProtocolError),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n", ProtocolError),
        (b"GET / HTTP/1.1\r\nHost: a/b\r\n", ProtocolError),
        (b"GET / HTTP/1.1\r\nHost: user@a\r\n", ProtocolError),
        (b"GET / HTTP/1.1\r\nHost: a:80x\r\n", ProtocolError),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 99, None),  # 100 fields
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 100, HeadersTooLarge),  # 101
    ],
)
def test_host_and_field_count(head: bytes, error: type[Exception] | None) -> None:
    parser = RequestParser()
    if error is None:
        events = parser.feed(head + b"\r\n")
        assert isinstance(events[0], RequestHead)
    else:
        with pytest.raises(error):
            parser.feed(head + b"\r\n")


def test_field_count_is_configurable() -> None:
    with pytest.raises(HeadersTooLarge) as refused:
        RequestParser(max_header_fields=3).feed(
            b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"
        )
    assert refused.value.status == 431


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "task path"])
async def test_the_server_answers_400_to_two_hosts_and_never_calls_the_handler(fast: bool) -> None:
    called = []

    async def handler(request: Request) -> Response:
        called.append(request)
        return Response(200, [], b"ok")

    def fast_handler(request: Request) -> bool:
        called.append(request)
        request.respond(Response(200, [], b"ok"))
        return True

    server = Server(handler, fast_handler=fast_handler if fast else None)
    await server.start("127.0.0.1", 0)
    client = await RawClient.connect(server.address)
    await client.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert (await client.response())[0] == 400
    assert called == []
    client.close()
    await server.shutdown(1)


def test_the_parser_sets_every_field_of_a_request_head() -> None:
    """The parser fills a head in field by field (without __init__): a field added to
    RequestHead without a default, and not set there, would be missing."""
    head = RequestParser().feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")[0]
    assert isinstance(head, RequestHead)
    for field in dataclasses.fields(RequestHead):
        getattr(head, field.name)  # AttributeError if the parser left it unset
