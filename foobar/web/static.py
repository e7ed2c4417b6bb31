"""Static files the way nginx serves them (`sendfile on; etag on; gzip_static on;`), with
RFC 9110's conditional and range rules where nginx is looser.

A request target becomes a file only through `resolve()`: percent-decoding, no NUL, no
backslash, no encoded slash, no `..`, then the real path (symlinks followed) must lie
inside the root. Anything else is 404 (400 when the target cannot be decoded). Only
regular files are served; a directory serves its index.html; there are no listings.

What a request path names is cached for `open_file_cache_valid` seconds (nginx's
open_file_cache): the file's metadata, a small file's bytes, and the head of its whole
200 answer serialised once (what nginx's header filter writes per request), so the
common request, a GET with no validator and no range, costs a dictionary look-up and
one write (a small file) or a write and a sendfile (a larger one, kept open).
"""

from __future__ import annotations

import dataclasses
import email.utils
import mimetypes
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes

from foobar.http import headers as hdrs
from foobar.http.server import FileBody, Request, Response
from foobar.http.writer import date_field, status_line

INDEX = "index.html"
# Files up to this size are kept in memory with their metadata (for open_file_cache_valid):
# one write answers them, where a larger file takes a sendfile more.
SMALL_FILE = 64 * 1024
SMALL_FILES_BUDGET = 32 * 1024 * 1024  # all cached contents together
# Larger files are kept open while cached (open_file_cache's descriptors): no open and
# close per request; at most this many, well inside the open-files limit
MAX_OPEN_FILES = 1000
TEXT_TYPES = ("text/", "application/javascript", "application/json", "image/svg+xml")
MAX_ENTRIES = 10_000  # request paths cached; past this the cache starts over


class BadTarget(Exception):
    """The request target cannot be decoded: 400."""


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    size: int
    mtime: int
    etag: bytes  # nginx's form: "<mtime hex>-<size hex>"
    last_modified: bytes
    content_type: bytes
    content: bytes | None = None  # a small file's bytes, read with its metadata
    file: FileBody | None = None  # a larger one whole, kept open while cached
    gzip: FileInfo | None = None  # the pre-compressed variant beside it

    def variants(self) -> tuple[FileInfo, ...]:
        return (self,) if self.gzip is None else (self, self.gzip)


@dataclass(frozen=True, slots=True)
class Entry:
    """What a request path names, as the cache holds it until `expires`: a file, a
    directory named without its trailing slash (301), or nothing (404)."""

    expires: float
    info: FileInfo | None = None
    directory: bool = False
    path_fields: hdrs.Headers = dataclasses.field(default_factory=list)  # by path prefix
    # the whole file's 200: status line and fields, Content-Length among them, no Date;
    # for the file and for its gzip variant
    head: bytes = b""
    gzip_head: bytes = b""


def http_date(seconds: float) -> bytes:
    return email.utils.formatdate(seconds, usegmt=True).encode()


def parse_http_date(value: bytes) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp() if parsed.tzinfo else None


def content_type(path: str) -> bytes:
    guessed, _ = mimetypes.guess_type(path)
    guessed = guessed or "application/octet-stream"
    if guessed.startswith(TEXT_TYPES):
        guessed += "; charset=utf-8"
    return guessed.encode()


def etag_matches(header: bytes, etag: bytes, weak: bool) -> bool:
    """Does an If-None-Match / If-Match / If-Range value match `etag`? Weak comparison
    ignores W/ prefixes (RFC 9110 §8.8.3.2)."""
    if header.strip() == b"*":
        return True
    for candidate in header.split(b","):
        candidate = candidate.strip()
        if weak:
            candidate = candidate.removeprefix(b"W/")
        elif candidate.startswith(b"W/"):
            continue
        if candidate == etag:
            return True
    return False


def parse_range(header: bytes, size: int) -> tuple[int, int] | bool | None:
    """A single `bytes=` range as (start, end inclusive); None to ignore the header (not
    bytes, several ranges, malformed: the whole file is sent, as RFC 9110 allows); False
    when unsatisfiable (416)."""
    unit, _, spec = header.partition(b"=")
    if unit.strip().lower() != b"bytes" or b"," in spec:
        return None  # several ranges: answered with the whole file, whatever their number
    first, dash, last = spec.strip().partition(b"-")
    if not dash or not (first.isdigit() or first == b"") or not (last.isdigit() or last == b""):
        return None
    if first == b"":
        if last == b"":
            return None
        suffix = int(last)
        if suffix == 0:
            return False
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid: ignored, as RFC 9110 §14.1.1 asks
    if start >= size:
        return False
    return start, min(end, size - 1)


def by_prefix(
    table: Mapping[str, Mapping[str, str]],
) -> list[tuple[bytes, list[tuple[bytes, bytes]]]]:
    """Per-path headers as (prefix, headers), longest prefix first: the first prefix a
    path starts with is its only match, as an nginx location's `add_header` replaces
    the ones it would inherit."""
    return sorted(
        (
            (prefix.encode(), [(name.encode(), value.encode()) for name, value in fields.items()])
            for prefix, fields in table.items()
        ),
        key=lambda item: len(item[0]),
        reverse=True,
    )


def matching(table: list[tuple[bytes, list[tuple[bytes, bytes]]]], path: bytes) -> hdrs.Headers:
    for prefix, fields in table:
        if path.startswith(prefix):
            return fields
    return []


class StaticFiles:
    def __init__(
        self,
        root: Path,
        cache_control: Mapping[str, str],
        cache_valid: float,
        add_headers: Mapping[str, Mapping[str, str]] | None = None,
        server_fields: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """`server_fields`: fields every answer carries (the server's name)."""
        self.root = root.resolve()
        self.cache_control = by_prefix(
            {prefix: {"Cache-Control": value} for prefix, value in cache_control.items()}
        )
        self.add_headers = by_prefix(add_headers or {})
        self.server_fields = list(server_fields)
        self.cache_valid = cache_valid
        # open_file_cache by request path: resolve() walks the path with a system call
        # per component, and the head is serialised once, both too dear per request
        self._cache: dict[bytes, Entry] = {}
        self._cached_bytes = 0
        self._open_files = 0

    def resolve(self, target_path: bytes) -> str | None:
        """The file system path for a request path, or None (404). BadTarget for 400."""
        if not target_path.startswith(b"/"):
            raise BadTarget("the target must be an absolute path")
        if b"%2f" in target_path.lower() or b"%5c" in target_path.lower():
            return None  # an encoded slash or backslash names no file of ours
        raw = unquote_to_bytes(target_path)
        if b"\x00" in raw:
            raise BadTarget("NUL in the target")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadTarget("the target is not UTF-8") from exc
        parts = text.split("/")
        if "\\" in text or any(part in (".", "..") for part in parts):
            return None
        candidate = os.path.join(self.root, *[part for part in parts if part])
        real = os.path.realpath(candidate)
        if real != str(self.root) and not real.startswith(str(self.root) + os.sep):
            return None  # a symlink that leads out of the root
        return real

    def entry(self, target_path: bytes, now: float) -> Entry:
        """What a request path names, cached for `cache_valid` seconds (`now`: the
        monotonic clock, as the request's `arrived` holds it). BadTarget for 400."""
        entry = self._cache.get(target_path)
        if entry is not None and entry.expires > now:
            return entry
        if entry is not None:
            del self._cache[target_path]
            self._forget(entry)
        if len(self._cache) >= MAX_ENTRIES:
            self.close()
        entry = self._cache[target_path] = self._find(target_path, now + self.cache_valid)
        return entry

    def close(self) -> None:
        """Empty the cache, closing the files it holds open."""
        for entry in self._cache.values():
            self._forget(entry)
        self._cache.clear()

    def _forget(self, entry: Entry) -> None:
        """Give back what an entry held: its bytes to the budget, its open files. Only
        the fast path sends from those, and it has finished with them when it returns."""
        if entry.info is None:
            return
        for info in entry.info.variants():
            self._cached_bytes -= len(info.content or b"")
            if info.file is not None:
                os.close(info.file.fd)
                self._open_files -= 1

    def _find(self, target_path: bytes, expires: float) -> Entry:
        path = self.resolve(target_path)
        if path is None:
            return Entry(expires)
        info, is_directory = self._stat(path)
        if is_directory:
            if not target_path.endswith(b"/"):
                return Entry(expires, directory=True)
            info, _ = self._stat(os.path.join(path, INDEX))
        if info is None:
            return Entry(expires)
        if (gzip := self._stat(info.path + ".gz")[0]) is not None:
            info = dataclasses.replace(info, gzip=gzip)
        path_fields = [
            *matching(self.cache_control, target_path),
            *matching(self.add_headers, target_path),
            *self.server_fields,
        ]
        head = whole_file_head(representation_fields(info, info) + path_fields, info.size)
        gzip_head = b""
        if info.gzip is not None:
            fields = representation_fields(info, info.gzip) + path_fields
            gzip_head = whole_file_head(fields, info.gzip.size)
        return Entry(expires, info, path_fields=path_fields, head=head, gzip_head=gzip_head)

    def _stat(self, path: str) -> tuple[FileInfo | None, bool]:
        """(the regular file at `path`, a small one's bytes with it, or None; whether
        `path` is a directory)."""
        try:
            result = os.stat(path)
        except (OSError, ValueError):
            return None, False
        if stat.S_ISDIR(result.st_mode):
            return None, True
        if not stat.S_ISREG(result.st_mode):
            return None, False
        mtime = int(result.st_mtime)
        etag = b'"%x-%x"' % (mtime, result.st_size)
        content = None
        if (
            self.cache_valid > 0
            and result.st_size <= SMALL_FILE
            and self._cached_bytes + result.st_size <= SMALL_FILES_BUDGET
        ):
            try:
                with open(path, "rb") as file:
                    content = file.read(SMALL_FILE + 1)
            except OSError:
                return None, False
            if len(content) != result.st_size:
                content = None  # changing under us: served from disk this time
            else:
                self._cached_bytes += len(content)
        info = FileInfo(
            path, result.st_size, mtime, etag, http_date(mtime), content_type(path), content
        )
        if self.cache_valid > 0 and content is None and self._open_files < MAX_OPEN_FILES:
            info = self._kept_open(info, result)
        return info, False

    def _kept_open(self, info: FileInfo, result: os.stat_result) -> FileInfo:
        """`info` with its file open for the cache's lifetime, unless it changed since
        its stat (then it is opened per request this time)."""
        whole = open_file(info, 0, info.size, keep_open=True)
        if whole is None:
            return info
        if not same_version(os.fstat(whole.fd), result):
            os.close(whole.fd)
            return info
        self._open_files += 1
        return dataclasses.replace(info, file=whole)

    def whole_file(
        self, request: Request, target_path: bytes
    ) -> tuple[bytes, bytes | FileBody] | None:
        """The head and body of the whole file's 200 for a GET or HEAD of `target_path`
        that asks for no more (no validator, no range): the head serialised in the cache,
        with the Date. None when `serve` must answer. The fast path's common request:
        written for the fewest steps."""
        method = request.method
        if method != "GET" and method != "HEAD":
            return None
        if request.conditional:  # a validator or a range: `serve` answers
            return None
        now = request.arrived
        entry = self._cache.get(target_path)
        if entry is None or entry.expires <= now:  # (`entry`'s hit, without its call)
            try:
                entry = self.entry(target_path, now)
            except BadTarget:
                return None  # `serve` answers it with a 400
        info, head = entry.info, entry.head
        if info is None:
            return None
        if info.gzip is not None and accepts_gzip(request.header(b"accept-encoding")):
            info, head = info.gzip, entry.gzip_head
        if method == "HEAD":
            return head + date_field(now), b""
        body = info.content if info.content is not None else info.file
        if body is None and (body := open_file(info, 0, info.size)) is None:
            return None
        return head + date_field(now), body

    def serve(self, request: Request) -> Response | None:
        """The response for a file, or None when there is no such file (404). Nothing
        here waits (a stat, an open), so the fast path can answer with it."""
        entry = self.entry(request.path, request.arrived)
        if entry.directory:
            location = request.path + b"/" + (b"?" + request.query if request.query else b"")
            return Response(301, [(b"Location", location), *self.server_fields], b"")
        if entry.info is None:
            return None
        return self.respond(request, entry.info, entry.path_fields)

    def respond(self, request: Request, info: FileInfo, path_fields: hdrs.Headers) -> Response:
        chosen = info
        if info.gzip is not None and accepts_gzip(request.header(b"accept-encoding")):
            chosen = info.gzip
        headers = representation_fields(info, chosen) + path_fields

        precondition = self.preconditions(request, chosen)
        if precondition is not None:
            return Response(precondition, headers, b"")

        start, end = 0, chosen.size - 1
        status = 200
        range_header = request.header(b"range")
        if (
            range_header is not None
            and request.method == "GET"
            and self.range_applies(request, chosen)
        ):
            wanted = parse_range(range_header, chosen.size)
            if wanted is False:
                headers.append((b"Content-Range", b"bytes */%d" % chosen.size))
                return Response(416, headers, b"")
            if isinstance(wanted, tuple):
                start, end = wanted
                status = 206
                headers.append((b"Content-Range", b"bytes %d-%d/%d" % (start, end, chosen.size)))
        if chosen.content is not None:
            content = chosen.content
            return Response(status, headers, content if status == 200 else content[start : end + 1])
        body = open_file(chosen, start, end - start + 1)
        if body is None:
            return Response(404, [*self.server_fields], b"")
        return Response(status, headers, body)

    @staticmethod
    def preconditions(request: Request, info: FileInfo) -> int | None:
        """RFC 9110 §13.2.2, in its order: 412 for a failed If-Match or
        If-Unmodified-Since, 304 for GET/HEAD whose validator still matches."""
        if_match = request.header(b"if-match")
        if if_match is not None:
            if not etag_matches(if_match, info.etag, weak=False):
                return 412
        else:
            unmodified_since = request.header(b"if-unmodified-since")
            when = parse_http_date(unmodified_since) if unmodified_since else None
            if when is not None and info.mtime > when:
                return 412
        if_none_match = request.header(b"if-none-match")
        if if_none_match is not None:
            # when present, If-Modified-Since is not looked at (§13.1.3)
            return 304 if etag_matches(if_none_match, info.etag, weak=True) else None
        modified_since = request.header(b"if-modified-since")
        when = parse_http_date(modified_since) if modified_since else None
        if when is not None and info.mtime <= when:
            return 304
        return None

    @staticmethod
    def range_applies(request: Request, info: FileInfo) -> bool:
        """If-Range: the range holds only while the representation is unchanged; an ETag
        compares strongly, a date must equal Last-Modified exactly (§13.1.5)."""
        if_range = request.header(b"if-range")
        if if_range is None:
            return True
        if if_range.startswith((b'"', b'W/"')):
            return etag_matches(if_range, info.etag, weak=False)
        return if_range == info.last_modified


def same_version(one: os.stat_result, other: os.stat_result) -> bool:
    return (one.st_dev, one.st_ino, one.st_size, one.st_mtime_ns) == (
        other.st_dev,
        other.st_ino,
        other.st_size,
        other.st_mtime_ns,
    )


def open_file(info: FileInfo, offset: int, count: int, keep_open: bool = False) -> FileBody | None:
    """`count` bytes of the file from `offset`, for sendfile; None when it has gone since
    it was looked up (404: the next look-up will agree)."""
    try:
        fd = os.open(info.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    return FileBody(fd, offset, count, keep_open=keep_open)


def representation_fields(info: FileInfo, chosen: FileInfo) -> hdrs.Headers:
    """The fields that describe what is sent: `chosen`, the file `info` itself or its gzip
    variant (then with Content-Encoding); Vary when there is a choice."""
    fields: hdrs.Headers = [(b"Content-Type", info.content_type)]
    if info.gzip is not None:
        fields.append((b"Vary", b"Accept-Encoding"))
        if chosen is info.gzip:
            fields.append((b"Content-Encoding", b"gzip"))
    fields += [
        (b"ETag", chosen.etag),
        (b"Last-Modified", chosen.last_modified),
        (b"Accept-Ranges", b"bytes"),
    ]
    return fields


def whole_file_head(fields: hdrs.Headers, size: int) -> bytes:
    """A 200's status line and fields, Content-Length last; the Date is added per answer."""
    lines = b"".join(b"%s: %s\r\n" % field for field in fields)
    return status_line(200, None) + lines + b"Content-Length: %d\r\n" % size


def accepts_gzip(header: bytes | None) -> bool:
    if not header:
        return False
    for item in header.lower().split(b","):
        coding, _, params = item.strip().partition(b";")
        if coding.strip() not in (b"gzip", b"*"):
            continue
        quality = params.strip()
        if quality.startswith(b"q="):
            try:
                return float(quality[2:]) > 0
            except ValueError:
                return False
        return True
    return False
