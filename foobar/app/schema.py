"""The board's tables, created and migrated by the app on start against the primary.

Several app servers may start at once: a named lock (GET_LOCK) lets one migrate while
the others wait, and a version table records what has been applied. Migrations are only
ever appended to this list.
"""

from __future__ import annotations

import logging
from typing import Any

from foobar.app.errors import SchemaError

log = logging.getLogger("foobar.app.schema")

LOCK_NAME = "foobar.schema"
LOCK_TIMEOUT = 30  # seconds another server may take migrating before we give up

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE IF NOT EXISTS posts (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            author VARCHAR(40) NOT NULL,
            title VARCHAR(200) NOT NULL,
            body TEXT NOT NULL,
            likes INT UNSIGNED NOT NULL DEFAULT 0,
            created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
            idempotency_key VARCHAR(128) NULL,
            UNIQUE KEY posts_idempotency_key (idempotency_key)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
    ],
]


async def migrate(connection: Any) -> int:
    """Bring the schema up to date; returns the version it is at."""
    async with connection.cursor() as cursor:
        await cursor.execute("SELECT GET_LOCK(%s, %s)", (LOCK_NAME, LOCK_TIMEOUT))
        (locked,) = await cursor.fetchone()
        if locked != 1:
            raise SchemaError(f"another app server held the schema lock for {LOCK_TIMEOUT}s")
        try:
            await cursor.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INT NOT NULL PRIMARY KEY,"
                " applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP) ENGINE=InnoDB"
            )
            await cursor.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            (current,) = await cursor.fetchone()
            for version, statements in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                log.info("event=migrate version=%d", version)
                for statement in statements:
                    await cursor.execute(statement)
                await cursor.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            return len(MIGRATIONS)
        finally:
            await cursor.execute("SELECT RELEASE_LOCK(%s)", (LOCK_NAME,))
