"""A realistic visitor of www.foobar.com, through the load balancer.

    locust -f loadtests/locustfile.py --host https://localhost:8443     (or `make loadtest`)

About 60% of visits open the page and list the posts, 25% read a post, 10% write a post
and read it back at once (a missing post is a failure: read-your-writes under load, the
GTID cookie carrying it across app servers), 5% like one. Dynamic URLs are grouped by
`name=` so the statistics stay readable.
"""

from __future__ import annotations

import random
import uuid

from locust import FastHttpUser, between, task


class Visitor(FastHttpUser):
    wait_time = between(0.1, 1.0)
    # `make up` serves a self-signed certificate
    insecure = True
    known_posts: list[int] = []  # shared by the visitors of this process

    @task(60)
    def browse(self) -> None:
        self.client.get("/", name="/ (page)")
        self.client.get("/style.css", name="/style.css")
        self.client.get("/app.js", name="/app.js")
        with self.client.get("/api/posts", name="/api/posts", catch_response=True) as response:
            # Only a list the replica served names posts every visitor can read: one from
            # the primary (this visitor's GTID was newer than the replica) may hold posts
            # other visitors, without that cookie, cannot see yet.
            if response.status_code == 200 and response.headers.get("X-Foobar-DB") == "replica":
                posts = response.json()["posts"]
                Visitor.known_posts[:] = [post["id"] for post in posts] or Visitor.known_posts
                response.success()

    @task(25)
    def read_post(self) -> None:
        if not Visitor.known_posts:
            return self.browse()
        post_id = random.choice(Visitor.known_posts)
        self.client.get(f"/api/posts/{post_id}", name="/api/posts/[id]")
        return None

    @task(10)
    def write_and_read_back(self) -> None:
        body = {
            "author": "locust",
            "title": f"load {uuid.uuid4().hex[:8]}",
            "body": "written under load",
        }
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        with self.client.post(
            "/api/posts",
            json=body,
            headers=headers,
            name="/api/posts (create)",
            catch_response=True,
        ) as created:
            if created.status_code != 201:
                created.failure(f"create answered {created.status_code}")
                return
            post = created.json()
        # at once, on whichever app server the balancer picks: the cookie makes it see it
        # (the smoke test stops the replica's SQL thread, so nothing else could)
        with self.client.get(
            f"/api/posts/{post['id']}", name="/api/posts/[id] (read back)", catch_response=True
        ) as read:
            if read.status_code != 200 or read.json().get("title") != body["title"]:
                read.failure(f"read-your-writes failed: {read.status_code}")

    @task(5)
    def like(self) -> None:
        if not Visitor.known_posts:
            return self.browse()
        post_id = random.choice(Visitor.known_posts)
        self.client.post(f"/api/posts/{post_id}/likes", name="/api/posts/[id]/likes")
        return None
