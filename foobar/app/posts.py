"""The message board's logic: each operation is a unit of work for the router."""

from __future__ import annotations

from typing import Any

import pymysql

from foobar.app.dbrouter import DbNode, Router, WorkRefused
from foobar.app.models import Likes, NewPost, Post, PostPage

COLUMNS = "id, author, title, body, likes, created_at"
# MySQL's ER_DUP_ENTRY: the Idempotency-Key was used before.
DUPLICATE_KEY = 1062


class NotFound(WorkRefused):
    pass


class KeyReused(WorkRefused):
    """The Idempotency-Key came with a different post."""


async def list_posts(
    router: Router, limit: int, before: int | None, gtid: str | None
) -> tuple[PostPage, DbNode]:
    async def work(cursor: Any) -> PostPage:
        if before is None:
            await cursor.execute(f"SELECT {COLUMNS} FROM posts ORDER BY id DESC LIMIT %s", (limit,))
        else:
            await cursor.execute(
                f"SELECT {COLUMNS} FROM posts WHERE id < %s ORDER BY id DESC LIMIT %s",
                (before, limit),
            )
        posts = [Post(**row) for row in await cursor.fetchall()]
        more = len(posts) == limit
        return PostPage(posts=posts, next_before=posts[-1].id if posts and more else None)

    return await router.read(work, gtid)


async def get_post(router: Router, post_id: int, gtid: str | None) -> tuple[Post | None, DbNode]:
    async def work(cursor: Any) -> Post | None:
        await cursor.execute(f"SELECT {COLUMNS} FROM posts WHERE id = %s", (post_id,))
        row = await cursor.fetchone()
        return Post(**row) if row else None

    return await router.read(work, gtid)


async def create_post(
    router: Router, new: NewPost, idempotency_key: str | None
) -> tuple[Post, bool, str | None]:
    """The stored post, whether this call created it (False: the key's first result),
    and the GTID of the write."""

    async def work(cursor: Any) -> tuple[Post, bool, str | None]:
        original_gtid = None
        try:
            await cursor.execute(
                "INSERT INTO posts (author, title, body, idempotency_key) VALUES (%s, %s, %s, %s)",
                (new.author, new.title, new.body, idempotency_key),
            )
            created = True
            await cursor.execute(f"SELECT {COLUMNS} FROM posts WHERE id = LAST_INSERT_ID()")
        except pymysql.err.IntegrityError as exc:
            if exc.args[0] != DUPLICATE_KEY or idempotency_key is None:
                raise
            # the unique key let exactly one of the concurrent requests insert
            created = False
            # this session wrote nothing: the token must cover the original insert
            await cursor.execute("SELECT @@GLOBAL.gtid_binlog_pos AS gtid")
            original_gtid = (await cursor.fetchone())["gtid"]
            await cursor.execute(
                f"SELECT {COLUMNS} FROM posts WHERE idempotency_key = %s", (idempotency_key,)
            )
        post = Post(**await cursor.fetchone())
        if not created and (post.author, post.title, post.body) != (
            new.author,
            new.title,
            new.body,
        ):
            raise KeyReused(idempotency_key)
        return post, created, original_gtid

    (post, created, original_gtid), gtid = await router.write(work)
    return post, created, original_gtid or gtid


async def like(router: Router, post_id: int) -> tuple[Likes, str | None]:
    async def work(cursor: Any) -> Likes:
        # LAST_INSERT_ID(expr) hands this session the value it wrote, so the count
        # returned is ours even with other likes landing at the same moment.
        await cursor.execute(
            "UPDATE posts SET likes = LAST_INSERT_ID(likes + 1) WHERE id = %s", (post_id,)
        )
        if cursor.rowcount == 0:
            raise NotFound(post_id)
        await cursor.execute("SELECT LAST_INSERT_ID() AS likes")
        return Likes(id=post_id, likes=(await cursor.fetchone())["likes"])

    return await router.write(work)
