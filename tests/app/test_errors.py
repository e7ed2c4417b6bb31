"""Each error status from the raw request that causes it, always as JSON."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import httpx
import pytest

from tests.app.conftest import RunningApp
from tests.conftest import RawClient
from tests.dbcluster import Cluster

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


def post(
    body: bytes, content_type: bytes = b"application/json", target: bytes = b"/api/posts"
) -> bytes:
    return (
        b"POST "
        + target
        + b" HTTP/1.1\r\nHost: www.foobar.com\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )


CASES = {
    "bad JSON": (post(b'{"author": "ada",'), 400),
    "JSON that is not UTF-8": (post(b'{"author": "\xff"}'), 400),
    "missing fields": (post(b'{"author": "ada"}'), 422),
    "title too long": (
        post(json.dumps({"author": "a", "title": "t" * 201, "body": "b"}).encode()),
        422,
    ),
    "control character": (
        post(json.dumps({"author": "a\x07", "title": "t", "body": "b"}).encode()),
        422,
    ),
    "unknown field": (
        post(json.dumps({"author": "a", "title": "t", "body": "b", "x": 1}).encode()),
        422,
    ),
    "not JSON": (post(b"author=ada", b"application/x-www-form-urlencoded"), 415),
    "no content type": (
        b"POST /api/posts HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
        415,
    ),
    "too large": (
        b"POST /api/posts HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n",
        413,
    ),
    "unknown post": (b"GET /api/posts/424242 HTTP/1.1\r\nHost: a\r\n\r\n", 404),
    "unknown path": (b"GET /api/nothing HTTP/1.1\r\nHost: a\r\n\r\n", 404),
    "non-numeric id": (b"GET /api/posts/abc HTTP/1.1\r\nHost: a\r\n\r\n", 404),
    "wrong method": (b"DELETE /api/posts HTTP/1.1\r\nHost: a\r\n\r\n", 405),
    "limit out of range": (b"GET /api/posts?limit=0 HTTP/1.1\r\nHost: a\r\n\r\n", 422),
    "before not a number": (b"GET /api/posts?before=x HTTP/1.1\r\nHost: a\r\n\r\n", 422),
    "malformed request": (b"GET /api/posts HTTP/1.1\r\nHost a\r\n\r\n", 400),
}


async def test_each_error_status_as_json(apps: list[RunningApp]) -> None:
    # one app for all the cases: starting a database pair per case would cost seconds each
    for name, (data, expected) in CASES.items():
        client = await RawClient.connect(apps[0].address)
        await client.send(data)
        status, headers, body = await client.response()
        client.close()
        assert status == expected, name
        assert headers["content-type"] == "application/json", name
        assert headers["x-foobar-app"] == "app1", name
        answer = json.loads(body)
        assert answer["status"] == expected, name
        assert "Traceback" not in body.decode(), name
        if expected == 405:
            assert headers["allow"] == "GET, POST"
        if name == "title too long":
            assert answer["detail"] == [
                {"field": "title", "message": "String should have at most 200 characters"}
            ]


async def test_password_never_shown(
    db_cluster: Cluster, apps: list[RunningApp], caplog: pytest.LogCaptureFixture
) -> None:
    password = db_cluster.supervisor.app_password
    status = await apps[0].server.status()
    assert password not in json.dumps(status)
    assert "mysql://foobar:***@" in str(apps[0].server.settings.primary)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "foobar.app",
        "--check",
        "--primary",
        db_cluster.dsn("primary"),
        "--replica",
        db_cluster.dsn("replica"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    assert password not in out.decode()
    assert 'primary = "mysql://foobar:***@' in out.decode()
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient(base_url=apps[0].url) as client:
        await client.get("/api/posts")
    assert password not in caplog.text
