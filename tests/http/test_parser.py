"""The response parser's short path for a whole answer (`ResponseParser.whole`): it reads
what `feed` reads, and leaves everything else to `feed` with nothing changed. The request
parser's version, inferred from llhttp's keep-alive where that tells it, and the fields it
notes by name, however spelled."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from foobar.http.errors import ProtocolError
from foobar.http.parser import END, RequestHead, RequestParser, ResponseHead, ResponseParser

HEAD = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\n"


def fed(data: bytes) -> tuple[int, bytes, bytes, bool]:
    """What `feed` reads of one whole answer, as `whole` gives it."""
    head, *body, end = ResponseParser().feed(data)
    assert isinstance(head, ResponseHead) and end is END, (head, body, end)
    return head.status, head.raw, b"".join(body), head.keep_alive  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "answer",
    [
        HEAD + b"\r\nok",
        HEAD + b"Connection: keep-alive\r\n\r\nok",
        HEAD + b"Connection: close\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 404 Not Found\r\nConnection: keep-alive\r\nContent-Length:  2 \r\n\r\nno",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nServer: nginx\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",  # spelled as some servers do
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\n\r\n",  # no body, whatever it says
    ],
)
def test_a_whole_answer_is_read_as_feed_reads_it(answer: bytes) -> None:
    parser = ResponseParser()
    whole = parser.whole(answer)
    assert whole == fed(answer)
    if whole[3]:  # kept alive: answer after answer on one connection
        assert parser.whole(answer) == parser.whole(answer) == whole


@pytest.mark.parametrize(
    "data",
    [
        HEAD + b"\r\no",  # part of one
        HEAD + b"\r\nokHTTP/1.1 200 OK\r\n",  # and the start of another
        HEAD + b"\r\nok\r\n",  # and more bytes
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD + b"\r\nok",  # an interim answer before it
        b"HTTP/1.1 204 No Content\r\n\r\n" + HEAD + b"\r\nok",  # two answers
        b"HTTP/1.1 200 OK\r\n\r\nok",  # delimited by the connection's close
        b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
)
def test_anything_else_is_left_to_feed(data: bytes) -> None:
    parser = ResponseParser()
    assert parser.whole(data) is None
    assert not parser.in_message
    assert parser.whole(HEAD + b"\r\nok") is not None  # its llhttp was not left mid-message


@pytest.mark.parametrize(
    "data",
    [
        HEAD + b"Content-Length: 2\r\n\r\nok",  # two lengths
        b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nBad Field: 1\r\nContent-Length: 2\r\n\r\nok",
    ],
)
def test_a_malformed_answer_is_refused_by_feed(data: bytes) -> None:
    parser = ResponseParser()
    assert parser.whole(data) is None
    with pytest.raises(ProtocolError):
        parser.feed(data)


def test_a_head_over_the_limits_is_refused_by_feed() -> None:
    parser = ResponseParser(max_header_bytes=64, max_header_fields=4)
    long_head = HEAD + b"X-Long: " + b"a" * 64 + b"\r\n\r\nok"
    many_fields = HEAD + b"A: 1\r\n" * 20 + b"\r\nok"
    for data in (long_head, many_fields):
        assert parser.whole(data) is None
        with pytest.raises(ProtocolError):
            ResponseParser(max_header_bytes=64, max_header_fields=4).feed(data)


def test_an_answer_to_head_or_after_an_unfinished_one_is_left_to_feed() -> None:
    parser = ResponseParser()
    parser.expect_head_response()
    assert parser.whole(HEAD + b"\r\n") is None
    assert [type(event) for event in parser.feed(HEAD + b"\r\n")] == [ResponseHead, type(END)]
    parser.feed(HEAD + b"\r\no")
    assert parser.whole(HEAD + b"\r\nok") is None  # "k" ends the answer begun


def test_after_a_read_left_to_feed_the_next_whole_answer_takes_the_short_path() -> None:
    parser = ResponseParser()
    answer = HEAD + b"\r\nok"
    assert parser.whole(answer + b"\r\n") is None  # an empty line after it: feed's
    assert [type(event) for event in parser.feed(answer + b"\r\n")] == [
        ResponseHead,
        bytes,
        type(END),
    ]
    assert parser.whole(answer) == fed(answer)


# the fields llhttp reads for keep-alive (Proxy-Connection among them), and others
CONNECTION_FIELDS = [
    b"Connection: keep-alive",
    b"Connection: close",
    b"connection: Keep-Alive",
    b"Proxy-Connection: keep-alive",
    b"Proxy-Connection: close",
    b"Keep-Alive: 300",
    b"Connection: upgrade",
    b"TE: trailers",
    b"Content-Length: 0",
    b"X-Other: close",
]


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
def test_a_requests_version_is_read_whatever_its_connection_fields(version: bytes) -> None:
    """The version comes from llhttp's keep-alive for a request with no Connection field
    (kept alive: 1.1) and from llhttp's accessor for the rest: both give the version sent."""
    for count in range(3):
        for fields in itertools.combinations(CONNECTION_FIELDS, count):
            data = b"GET / HTTP/%s\r\nHost: a\r\n%s\r\n" % (
                version,
                b"".join(field + b"\r\n" for field in fields),
            )
            head = RequestParser().feed(data)[0]
            assert isinstance(head, RequestHead)
            assert head.version == version.decode(), data


@pytest.mark.parametrize("version", [b"0.9", b"2.0"])
def test_a_version_other_than_1_0_and_1_1_is_still_refused(version: bytes) -> None:
    with pytest.raises(ProtocolError):
        RequestParser().feed(b"GET / HTTP/%s\r\nHost: a\r\n\r\n" % version)


@pytest.mark.parametrize("spell", [bytes.lower, bytes.title, bytes.upper, bytes.swapcase])
def test_a_requests_fields_are_noted_however_their_names_are_spelled(
    spell: Callable[[bytes], bytes],
) -> None:
    """The fields the parser notes are found by their usual spellings without lower-casing
    them, and by any other spelling with it: each is noted the same."""

    def request(*fields: tuple[bytes, bytes]) -> RequestHead:
        lines = b"".join(spell(name) + b": " + value + b"\r\n" for name, value in fields)
        head = RequestParser().feed(b"GET / HTTP/1.1\r\n%s\r\n" % lines)[0]
        assert isinstance(head, RequestHead)
        return head

    head = request((b"Host", b"a"), (b"Referer", b"/r"), (b"User-Agent", b"u"), (b"Accept", b"*"))
    assert (head.host, head.referer, head.user_agent) == (b"a", b"/r", b"u")
    assert head.relayable and not head.conditional
    assert request((b"Host", b"a"), (b"If-None-Match", b'"x"')).conditional
    assert not request((b"Host", b"a"), (b"X-Real-IP", b"1.2.3.4")).relayable
    assert not request((b"Host", b"a"), (b"TE", b"trailers")).relayable
    assert request((b"Host", b"a"), (b"Content-Length", b"3")).content_length == 3
    with pytest.raises(ProtocolError):
        request((b"Host", b"a"), (b"Host", b"b"))
