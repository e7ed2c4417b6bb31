"""The site end to end: the package's own pages through foobar.web, the API through it to
a real app server on a real primary-replica pair."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from foobar.app.serve import AppServer
from tests.app.conftest import app_settings
from tests.dbcluster import Cluster
from tests.web.conftest import StartWeb

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def site_url(db_cluster: Cluster, start_web: StartWeb) -> AsyncIterator[str]:
    # The app checks the replica once at start and then not for a minute: a replica whose
    # SQL thread the test stops stays in use, stale, as one that lags (only the GTID
    # cookie can make a read see a write then).
    app = AppServer(app_settings(db_cluster, "app1", health_interval=60))
    await app.start()
    # checked by hand until both nodes are usable (a fresh replica may not be at first)
    for _ in range(100):
        await app.router.check()
        if all(node.usable for node in app.router.nodes):
            break
        await asyncio.sleep(0.1)
    web = await start_web(upstreams=[f"127.0.0.1:{app.server.address[1]}"])  # the package's site
    host, port = web.server.address
    yield f"http://{host}:{port}"
    await app.stop()


async def test_open_post_see_and_like(site_url: str, db_cluster: Cluster) -> None:
    async with (
        httpx.AsyncClient(base_url=site_url) as browser,
        httpx.AsyncClient(base_url=site_url) as stranger,  # no cookie
    ):
        page = await browser.get("/")
        assert page.status_code == 200 and '<form id="compose">' in page.text
        for asset, kind in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
            response = await browser.get(asset)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith(kind), asset

        # replication stalls: what is written now reaches the replica only later
        await db_cluster.admin(db_cluster.replica.name).execute("STOP SLAVE SQL_THREAD")
        created = await browser.post(
            "/api/posts",
            json={"author": "ada", "title": "Hello", "body": "from the site"},
            headers={"Idempotency-Key": "site-test-1"},
        )
        assert created.status_code == 201
        assert created.headers["x-foobar-web"] == "web1"
        assert created.headers["x-foobar-app"] == "app1"
        assert created.headers["x-foobar-db"] == "primary"
        post_id = created.json()["id"]
        # without the cookie the stale replica answers: the post is not there yet
        unseen = await stranger.get("/api/posts")
        assert unseen.headers["x-foobar-db"] == "replica"
        assert post_id not in [post["id"] for post in unseen.json()["posts"]]
        # the cookie the write set makes the very next read see it, from the primary
        listed = await browser.get("/api/posts")
        assert listed.json()["posts"][0]["id"] == post_id
        assert listed.headers["x-foobar-db"] == "primary"
        # replication resumes: the replica catches up and the cookie's read is its again
        await db_cluster.admin(db_cluster.replica.name).execute("START SLAVE SQL_THREAD")
        await db_cluster.wait_until(db_cluster.replica.name, "SELECT COUNT(*) FROM posts", 1)
        caught_up = await browser.get("/api/posts")
        assert caught_up.json()["posts"][0]["id"] == post_id
        assert caught_up.headers["x-foobar-db"] == "replica"

        liked = await browser.post(f"/api/posts/{post_id}/likes")
        assert liked.json() == {"id": post_id, "likes": 1}
        read = await browser.get(f"/api/posts/{post_id}")
        assert read.json()["likes"] == 1
