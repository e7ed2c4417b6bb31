"""What a hostile or careless client sends the app: SQL metacharacters, emoji, NUL and
lone surrogates, every length boundary, and GTID tokens that are broken or from the
future. Nothing is a 500, nothing is stored but what was sent, nothing waits too long."""

from __future__ import annotations

import time

import httpx
import pytest

from foobar.app.dbrouter import GTID_PATTERN
from foobar.app.routes import MAX_IDEMPOTENCY_KEY, MAX_LIMIT
from tests.app.conftest import RunningApp
from tests.dbcluster import Cluster

pytestmark = pytest.mark.timeout(120)

INJECTIONS = [
    "'; DROP TABLE posts; --",
    '" OR "1"="1',
    "1' OR '1'='1' /*",
    "\\'; SELECT SLEEP(5); -- \\",
    "%_%\\%\\_",
    "Robert'); DELETE FROM posts WHERE ('1'='1",
    "0x27 CHAR(39) \\x27 \\0 \\b \\Z",
    "`backticks` $1 ? :name %s %(x)s {0}",
]
UTF8MB4 = ["👍🏽 emoji", "\U0001d54f \U0001d11e 🇫🇷", "日本語と한국어", "Ωmega ∑ ﬁ Å"]


async def create(client: httpx.AsyncClient, **fields: str) -> httpx.Response:
    post = {"author": "ada", "title": "t", "body": "b", **fields}
    return await client.post("/api/posts", json=post)


async def count(client: httpx.AsyncClient, gtid: str) -> int:
    """How many posts a reader sees who presents `gtid` (the last write's)."""
    listed = await client.get(
        "/api/posts", params={"limit": MAX_LIMIT}, headers={"X-Foobar-GTID": gtid}
    )
    return len(listed.json()["posts"])


async def test_sql_metacharacters_and_utf8mb4_round_trip(apps: list[RunningApp]) -> None:
    async with apps[0].client() as writer, apps[1].client() as reader:
        for text in INJECTIONS + UTF8MB4:
            created = await create(writer, author=text[:40], title=text, body=f"{text}\n{text}")
            assert created.status_code == 201, (text, created.text)
            # read back on the other app server, through its own pool and the replica
            gtid = created.headers["x-foobar-gtid"]
            read = await reader.get(
                created.headers["location"], headers={"Cookie": f"foobar_gtid={gtid}"}
            )
            assert read.status_code == 200
            assert (read.json()["author"], read.json()["title"], read.json()["body"]) == (
                text[:40],
                text,
                f"{text}\n{text}",
            )
        # the table is still there and holds exactly what was posted
        assert await count(reader, gtid) == len(INJECTIONS) + len(UTF8MB4)
        # the injection strings as query parameters are refused as values, not run
        for text in INJECTIONS[:3]:
            listed = await reader.get("/api/posts", params={"limit": text})
            assert listed.status_code == 422
            assert listed.json()["detail"][0]["field"] == "limit"


async def test_nul_and_lone_surrogates_never_a_500(apps: list[RunningApp]) -> None:
    headers = {"Content-Type": "application/json"}
    cases = {
        # escaped in JSON: valid JSON, refused by the field's rule, with the field named
        b'{"author": "a\\u0000b", "title": "t", "body": "b"}': (422, "author"),
        b'{"author": "a", "title": "\\ud800", "body": "b"}': (422, "title"),
        b'{"author": "a", "title": "t", "body": "x\\udfff"}': (422, "body"),
        b'{"author": "a", "title": "t", "body": "\\udbff\\udfff ok"}': (201, None),  # a pair
        # raw in the bytes: not JSON (a control character in a string)
        b'{"author": "a\x00b", "title": "t", "body": "b"}': (400, None),
        # an encoded surrogate: json passes it through (surrogatepass), the field refuses it
        b'{"author": "a", "title": "\xed\xa0\x80", "body": "b"}': (422, "title"),
    }
    async with apps[0].client() as client:
        for body, (status, field) in cases.items():
            response = await client.post("/api/posts", content=body, headers=headers)
            assert response.status_code == status, (body, response.text)
            if field is not None:
                assert [problem["field"] for problem in response.json()["detail"]] == [field]
        stored = (await client.get("/api/posts")).json()["posts"]
        assert [post["body"] for post in stored] == ["\U0010ffff ok"]


async def test_every_length_boundary_names_its_field(apps: list[RunningApp]) -> None:
    async with apps[0].client() as client:
        for field, limit in (("author", 40), ("title", 200), ("body", 10_000)):
            for text in ("x" * limit, "🙂" * limit):  # characters, not bytes: utf8mb4 columns
                created = await create(client, **{field: text})
                assert created.status_code == 201, (field, len(text))
                assert created.json()[field] == text
            for text in ("x" * (limit + 1), "", "   "):
                refused = await create(client, **{field: text})
                assert refused.status_code == 422, (field, len(text))
                assert [problem["field"] for problem in refused.json()["detail"]] == [field]

        assert (await client.get("/api/posts", params={"limit": MAX_LIMIT})).status_code == 200
        for limit in (str(MAX_LIMIT + 1), "0", "-1", "1e3", "9" * 40):
            refused = await client.get("/api/posts", params={"limit": limit})
            assert refused.status_code == 422, limit
            assert refused.json()["detail"][0]["field"] == "limit"

        post = {"author": "a", "title": "keyed", "body": "b"}
        longest = {"Idempotency-Key": "k" * MAX_IDEMPOTENCY_KEY}
        assert (await client.post("/api/posts", json=post, headers=longest)).status_code == 201
        for key in ("k" * (MAX_IDEMPOTENCY_KEY + 1), "k" * 8000):
            refused = await client.post("/api/posts", json=post, headers={"Idempotency-Key": key})
            assert refused.status_code == 422
            assert refused.json()["detail"][0]["field"] == "Idempotency-Key"


BAD_TOKENS = {
    "malformed": "not-a-gtid",
    "injection": "0-1-1'; SELECT SLEEP(5); --",
    "oversized": "0-1-1," * 1000,
    "far future": "0-1-999999999999",
    "unknown domain": "77-1-5",
    "conflicting": "0-1-5,0-2-6",
    "not a triple": "1-2-3-4",
    "out of range": "0-1-99999999999999999999999",
    "over 64 bits": "0-1-99999999999999999999",  # passes the pattern, refused by MariaDB
    "domain over 32 bits": "9999999999-1-1",
    "only separators": "---,,,",
}


@pytest.mark.parametrize("where", ["header", "cookie"])
async def test_bad_gtid_tokens_cost_no_wait_beyond_the_timeout(
    db_cluster: Cluster, apps: list[RunningApp], where: str
) -> None:
    settings = apps[0].server.settings
    async with apps[0].client() as client:
        await create(client)
        # an ignored token reads from the replica as no token does: let it have the post
        await db_cluster.wait_until(db_cluster.replica.name, "SELECT COUNT(*) FROM posts", 1)
        for name, token in BAD_TOKENS.items():
            started = time.monotonic()
            name_value = ("X-Foobar-GTID", token)
            if where == "cookie":
                name_value = ("Cookie", f"foobar_gtid={token}")
            response = await client.get("/api/posts", headers=dict([name_value]))
            elapsed = time.monotonic() - started
            assert response.status_code == 200, (name, response.text)
            assert len(response.json()["posts"]) == 1, name
            assert elapsed < settings.gtid_wait_timeout + 0.4, (name, elapsed)


@pytest.mark.parametrize(
    ("token", "accepted"),
    [
        ("0-1-5", True),
        ("0-1-5,1-2-7", True),
        ("3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5:11", True),
        ("3e11fa47-71ca-11e1-9e33-c80aa9429562:23,3e11fa47-71ca-11e1-9e33-c80aa9429563:1-2", True),
        ("1-2-3-4", False),
        ("0-1-", False),
        ("-1-5", False),
        ("0-1-5,", False),
        ("---,,,", False),
        ("0-1-5;0-1-6", False),
        ("0-1-5 OR 1", False),
        ("3e11fa47-71ca-11e1-9e33-c80aa9429562", False),
        ("3e11fa47:1-5", False),
    ],
)
def test_gtid_pattern(token: str, accepted: bool) -> None:
    assert bool(GTID_PATTERN.fullmatch(token)) is accepted
