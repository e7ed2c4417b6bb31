"""Static files over real sockets: validators, ranges, gzip_static, traversal."""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
from pathlib import Path

import httpx
import pytest

from foobar.web.serve import WebServer
from foobar.web.settings import WebSettings
from tests.conftest import RawClient
from tests.web.conftest import StartWeb


def url(server: WebServer) -> str:
    host, port = server.server.address
    return f"http://{host}:{port}"


async def raw_status(server: WebServer, target: bytes) -> int:
    client = await RawClient.connect(server.server.address)
    await client.send(b"GET " + target + b" HTTP/1.1\r\nHost: www.foobar.com\r\n\r\n")
    status, _, _ = await client.response()
    client.close()
    return status


async def test_files_index_types_and_headers(start_web: StartWeb, site: Path) -> None:
    server = await start_web(root=site)
    async with httpx.AsyncClient(base_url=url(server)) as client:
        home = await client.get("/")
        assert (home.status_code, home.text) == (200, "<h1>home</h1>")
        assert home.headers["content-type"] == "text/html; charset=utf-8"
        assert home.headers["x-foobar-web"] == "web1"
        assert home.headers["cache-control"] == "no-cache"
        logo = await client.get("/assets/logo.svg")
        assert logo.headers["content-type"] == "image/svg+xml; charset=utf-8"
        assert logo.headers["cache-control"] == "public, max-age=3600"
        docs = await client.get("/docs")
        assert (docs.status_code, docs.headers["location"]) == (301, "/docs/")
        assert (await client.get("/docs/")).text == "<h1>docs</h1>"
        data = await client.get("/data.txt")
        stat = (site / "data.txt").stat()
        assert data.headers["etag"] == f'"{int(stat.st_mtime):x}-{stat.st_size:x}"'
        assert data.headers["accept-ranges"] == "bytes"
        assert (await client.get("/missing.txt")).status_code == 404
        assert (await client.post("/data.txt")).status_code == 405


async def test_head_has_length_and_no_body(start_web: StartWeb, site: Path) -> None:
    server = await start_web(root=site)
    client = await RawClient.connect(server.server.address)
    await client.send(b"HEAD /data.txt HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers = await client.head_only()
    assert (status, headers["content-length"]) == (200, "1000")
    await client.send(b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await client.response())[2] == b"<h1>home</h1>"  # nothing was left over


async def test_a_whole_file_from_its_cached_head_is_the_same_answer(
    start_web: StartWeb, site: Path
) -> None:
    """The common GET is answered from the head serialised in the cache; one with a
    validator that does not match goes the long way: the two agree field for field."""
    (site / "style.css.gz").write_bytes(gzip.compress((site / "style.css").read_bytes()))
    server = await start_web(root=site)
    async with httpx.AsyncClient(base_url=url(server)) as client:
        for path, encoding in (
            ("/", "identity"),
            ("/data.txt", "identity"),
            ("/style.css", "gzip"),
        ):
            headers = {"Accept-Encoding": encoding}
            cached = await client.get(path, headers=headers)
            built = await client.get(path, headers={**headers, "If-None-Match": '"other"'})
            assert (cached.status_code, built.status_code) == (200, 200)
            assert cached.content == built.content
            assert dict(cached.headers) == dict(built.headers) | {"date": cached.headers["date"]}


@pytest.mark.parametrize("size", [7, 100_000], ids=["in memory", "kept open"])
async def test_a_changed_file_is_served_changed_once_the_cache_expires(
    start_web: StartWeb, site: Path, size: int
) -> None:
    (site / "file.bin").write_bytes(b"x" * size)
    server = await start_web(root=site, open_file_cache_valid=0.2)
    async with httpx.AsyncClient(base_url=url(server)) as client:
        first = await client.get("/file.bin")
        changed_content = os.urandom(size)  # the same size: only the ETag's date differs
        (site / "file.bin").write_bytes(changed_content)
        os.utime(site / "file.bin", (1_000_000_000, 1_000_000_000))
        assert (await client.get("/file.bin")).headers["etag"] == first.headers["etag"]
        await asyncio.sleep(0.3)
        changed = await client.get("/file.bin")
        assert changed.content == changed_content
        assert changed.headers["etag"] == f'"3b9aca00-{size:x}"' != first.headers["etag"]
        assert changed.headers["last-modified"] == "Sun, 09 Sep 2001 01:46:40 GMT"


async def test_a_file_kept_open_answers_ranges_heads_and_conditionals(
    start_web: StartWeb, site: Path
) -> None:
    """The fast path sends the whole file from the cache's descriptor; the rest open
    their own, and the cache's stays usable."""
    content = os.urandom(100_000)
    (site / "large.bin").write_bytes(content)
    server = await start_web(root=site)
    async with httpx.AsyncClient(base_url=url(server)) as client:
        whole = await client.get("/large.bin")
        assert (whole.status_code, whole.content) == (200, content)
        part = await client.get("/large.bin", headers={"Range": "bytes=99990-"})
        assert (part.status_code, part.content) == (206, content[99990:])
        head = await client.head("/large.bin")
        assert (head.status_code, head.headers["content-length"]) == (200, "100000")
        etag = whole.headers["etag"]
        cached = await client.get("/large.bin", headers={"If-None-Match": etag})
        assert (cached.status_code, cached.content) == (304, b"")
        assert (await client.get("/large.bin")).content == content


async def test_files_kept_open_are_closed_when_their_entry_goes(
    start_web: StartWeb, site: Path
) -> None:
    (site / "large.bin").write_bytes(os.urandom(100_000))
    server = await start_web(root=site, open_file_cache_valid=0.05)
    async with httpx.AsyncClient(base_url=url(server)) as client:
        assert (await client.get("/large.bin")).status_code == 200
        serving = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            await asyncio.sleep(0.06)  # expired: the next request opens the file again
            assert (await client.get("/large.bin")).status_code == 200
            assert len(os.listdir("/proc/self/fd")) == serving
    await server.stop()
    assert len(os.listdir("/proc/self/fd")) < serving


async def test_a_large_file_to_a_slow_reader_arrives_whole(start_web: StartWeb, site: Path) -> None:
    """sendfile(2) from the fast path fills the socket; the task sends the rest when the
    client reads (from its own descriptor: the cache's has been closed meanwhile), and
    the connection carries on."""
    content = os.urandom(16 * 1024 * 1024)
    (site / "large.bin").write_bytes(content)
    server = await start_web(root=site, open_file_cache_valid=0.1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: full at once
    sock.connect(server.server.address)
    reader, writer = await asyncio.open_connection(sock=sock)
    client = RawClient(reader, writer)
    await client.send(b"GET /large.bin HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.2)  # the socket is full before the client reads a byte
    async with httpx.AsyncClient(base_url=url(server)) as other:  # the entry is renewed
        assert (await other.head("/large.bin")).status_code == 200
    status, headers, body = await client.response(timeout=20)
    assert (status, int(headers["content-length"])) == (200, len(content))
    assert body == content
    assert server.server.counts.sent == len(content)  # what the fast path sent counts too
    await client.send(b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await client.response())[2] == b"<h1>home</h1>"
    client.close()


async def test_conditional_requests(start_web: StartWeb, site: Path) -> None:
    server = await start_web(root=site)
    async with httpx.AsyncClient(base_url=url(server)) as client:
        first = await client.get("/data.txt")
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        for headers in (
            {"If-None-Match": etag},
            {"If-None-Match": f"W/{etag}"},
            {"If-None-Match": f'"other", {etag}'},
            {"If-None-Match": "*"},
            {"If-Modified-Since": modified},
        ):
            response = await client.get("/data.txt", headers=headers)
            assert response.status_code == 304, headers
            assert response.content == b"" and response.headers["etag"] == etag
        # If-None-Match present and not matching: If-Modified-Since is not looked at
        response = await client.get(
            "/data.txt", headers={"If-None-Match": '"stale"', "If-Modified-Since": modified}
        )
        assert response.status_code == 200
        old = "Mon, 01 Jan 2001 00:00:00 GMT"
        assert (
            await client.get("/data.txt", headers={"If-Modified-Since": old})
        ).status_code == 200
        assert (await client.get("/data.txt", headers={"If-Match": '"x"'})).status_code == 412
        assert (
            await client.get("/data.txt", headers={"If-Unmodified-Since": old})
        ).status_code == 412


@pytest.mark.parametrize("cached", [True, False], ids=["from memory", "by sendfile"])
async def test_ranges(start_web: StartWeb, site: Path, cached: bool) -> None:
    server = await start_web(root=site, open_file_cache_valid=1.0 if cached else 0)
    content = (site / "data.txt").read_bytes()
    async with httpx.AsyncClient(base_url=url(server)) as client:
        for spec, start, end in (
            ("0-0", 0, 0),
            ("10-19", 10, 19),
            ("990-", 990, 999),
            ("-5", 995, 999),
            ("900-5000", 900, 999),
        ):
            response = await client.get("/data.txt", headers={"Range": f"bytes={spec}"})
            assert response.status_code == 206, spec
            assert response.headers["content-range"] == f"bytes {start}-{end}/1000"
            assert response.content == content[start : end + 1]
        for spec in ("1000-", "5000-6000", "-0"):
            response = await client.get("/data.txt", headers={"Range": f"bytes={spec}"})
            assert response.status_code == 416, spec
            assert response.headers["content-range"] == "bytes */1000"
        many = await client.get("/data.txt", headers={"Range": "bytes=0-1,5-6"})
        assert (many.status_code, many.content) == (200, content)
        absurd = "bytes=" + ",".join(f"{n}-{n}" for n in range(1500))
        response = await client.get("/data.txt", headers={"Range": absurd})
        assert (response.status_code, len(response.content)) == (200, 1000)
        assert (await client.get("/data.txt", headers={"Range": "lines=1-2"})).status_code == 200
        etag = (await client.get("/data.txt")).headers["etag"]
        fresh = await client.get("/data.txt", headers={"Range": "bytes=0-9", "If-Range": etag})
        assert fresh.status_code == 206
        stale = await client.get("/data.txt", headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
        assert (stale.status_code, stale.content) == (200, content)
        old_date = await client.get(
            "/data.txt", headers={"Range": "bytes=0-9", "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"}
        )
        assert old_date.status_code == 200


async def test_gzip_static(start_web: StartWeb, site: Path) -> None:
    css = (site / "style.css").read_bytes()
    (site / "style.css.gz").write_bytes(gzip.compress(css))
    server = await start_web(root=site, open_file_cache_valid=0)
    client = await RawClient.connect(server.server.address)
    await client.send(b"GET /style.css HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip, br\r\n\r\n")
    status, headers, body = await client.response()
    assert (status, headers["content-encoding"], headers["vary"]) == (
        200,
        "gzip",
        "Accept-Encoding",
    )
    assert headers["content-type"] == "text/css; charset=utf-8"
    assert gzip.decompress(body) == css
    await client.send(b"GET /style.css HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers, body = await client.response()
    assert "content-encoding" not in headers and headers["vary"] == "Accept-Encoding"
    assert body == css
    await client.send(b"GET /style.css HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip;q=0\r\n\r\n")
    assert (await client.response())[2] == css


async def test_nothing_outside_the_root(start_web: StartWeb, site: Path) -> None:
    server = await start_web(root=site)
    vectors = {
        b"/../secret.txt": 404,
        b"/docs/../../secret.txt": 404,
        b"/%2e%2e/secret.txt": 404,
        b"/%2E%2E/%2E%2E/secret.txt": 404,
        b"/docs%2f..%2f..%2fsecret.txt": 404,
        b"/..%5csecret.txt": 404,
        b"/..\\secret.txt": 404,
        b"/escape": 404,  # a symlink that leaves the root
        b"/data.txt%00.html": 400,
        b"/%ff%fe": 400,
        b"//etc/passwd": 404,
        b"/" + os.fsencode(site.parent / "secret.txt"): 404,
    }
    for target, expected in vectors.items():
        assert await raw_status(server, target) == expected, target
    # a symlink inside the root to a file inside it is served
    assert await raw_status(server, b"/inside") == 200


async def test_security_headers_on_the_sites_pages(start_web: StartWeb) -> None:
    server = await start_web()  # the package's own site, default settings
    async with httpx.AsyncClient(base_url=url(server)) as client:
        for path in ("/", "/app.js", "/style.css"):
            response = await client.get(path)
            assert response.status_code == 200, path
            policy = response.headers["content-security-policy"]
            directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
            assert directives["default-src"] == "'self'"
            assert directives["script-src"] == "'self'"  # no 'unsafe-inline'
            assert directives["frame-ancestors"] == "'none'"
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "strict-origin-when-cross-origin"
        # a cached copy revalidated keeps them (nginx adds them to 304s as well)
        etag = (await client.get("/")).headers["etag"]
        again = await client.get("/", headers={"If-None-Match": etag})
        assert again.status_code == 304 and "content-security-policy" in again.headers


async def test_add_headers_by_path_prefix_longest_wins(start_web: StartWeb, site: Path) -> None:
    server = await start_web(
        root=site,
        add_headers={"/": {"X-Frame-Options": "DENY"}, "/assets/": {"X-Asset": "yes"}},
    )
    async with httpx.AsyncClient(base_url=url(server)) as client:
        home = await client.get("/")
        assert home.headers["x-frame-options"] == "DENY" and "x-asset" not in home.headers
        logo = await client.get("/assets/logo.svg")
        assert logo.headers["x-asset"] == "yes" and "x-frame-options" not in logo.headers


@pytest.mark.parametrize(
    "fields",
    [{"Bad Name": "x"}, {"X-Split": "a\r\nSet-Cookie: b"}, {"X-Nul": "a\x00"}],
)
def test_add_headers_refuses_what_would_split_a_header(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="add_headers"):
        WebSettings.model_validate({"add_headers": {"/": fields}})
