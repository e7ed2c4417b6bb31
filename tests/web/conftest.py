"""A web server on a temporary root and on upstreams the tests start."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from foobar.web.serve import WebServer
from foobar.web.settings import WebSettings

StartWeb = Callable[..., Awaitable[WebServer]]


@pytest.fixture
async def start_web() -> AsyncIterator[StartWeb]:
    started: list[WebServer] = []

    async def start(**fields: Any) -> WebServer:
        settings = WebSettings.model_validate(
            {"bind": "127.0.0.1:0", "name": "web1", "access_log": False, **fields}
        )
        server = WebServer(settings)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "docs" / "index.html").write_text("<h1>docs</h1>")
    (root / "data.txt").write_bytes(b"0123456789" * 100)
    (root / "style.css").write_text("body { color: black; }\n" * 50)
    (root / "assets").mkdir()
    (root / "assets" / "logo.svg").write_text("<svg/>")
    (tmp_path / "secret.txt").write_text("outside the root")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    (root / "inside").symlink_to(root / "data.txt")
    return root
