"""The board's HTTP API on the core server: routing, JSON in and out, errors as JSON.

    GET  /api/posts?limit=N&before=ID    newest first, keyset pagination
    POST /api/posts                      {author, title, body}; Idempotency-Key honoured
    GET  /api/posts/{id}
    POST /api/posts/{id}/likes
    GET  /healthz                        which database nodes are usable

Every response carries X-Foobar-App; one that touched the database carries X-Foobar-DB
(primary or replica). A write answers its GTID in X-Foobar-GTID and the `foobar_gtid`
cookie; a read presenting either is served only by a server that has that write.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, Histogram
from pydantic import BaseModel, ValidationError

from foobar.admin import PlainCounter
from foobar.app import posts
from foobar.app.dbrouter import GTID_PATTERN, MAX_GTID_TOKEN, DbNode, Router
from foobar.app.errors import DatabaseUnavailable
from foobar.app.models import NewPost
from foobar.http import headers as hdrs
from foobar.http.errors import HTTPError
from foobar.http.server import Request, Response

log = logging.getLogger("foobar.app")

GTID_COOKIE = "foobar_gtid"
# Long enough for any replica to catch up; a token past it only costs a wait.
GTID_COOKIE_SECONDS = 300
MAX_IDEMPOTENCY_KEY = 128  # the column's size
DEFAULT_LIMIT, MAX_LIMIT = 20, 100

Handler = Callable[[Request, re.Match[str]], Awaitable[Response]]


class ApiError(HTTPError):
    """An error answered as JSON; `detail` may carry structure (field errors)."""

    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(message, status)
        self.detail = detail


def json_body(data: Any) -> bytes:
    if isinstance(data, BaseModel):
        return data.model_dump_json().encode()
    return json.dumps(data, separators=(",", ":")).encode()


class App:
    def __init__(self, name: str, router: Router, registry: CollectorRegistry) -> None:
        self.name = name
        self.router = router
        self.requests = PlainCounter(  # counted per request: no lock taken
            "foobar_app_requests",
            "requests by route and status",
            ["method", "route", "status"],
            registry,
        )
        self.latency = Histogram(
            "foobar_app_request_seconds", "time to answer", ["route"], registry=registry
        )
        # (pattern, route name, {method: handler})
        self.routes: list[tuple[re.Pattern[str], str, dict[str, Handler]]] = [
            (
                re.compile(r"/api/posts"),
                "/api/posts",
                {"GET": self.list_posts, "POST": self.create_post},
            ),
            (re.compile(r"/api/posts/([0-9]{1,18})"), "/api/posts/{id}", {"GET": self.get_post}),
            (
                re.compile(r"/api/posts/([0-9]{1,18})/likes"),
                "/api/posts/{id}/likes",
                {"POST": self.like},
            ),
            (re.compile(r"/healthz"), "/healthz", {"GET": self.healthz}),
        ]

    # plumbing

    def response(
        self, status: int, data: Any, node: DbNode | None = None, extra: hdrs.Headers | None = None
    ) -> Response:
        headers = [
            (b"Content-Type", b"application/json"),
            (b"Cache-Control", b"no-store"),
            (b"X-Foobar-App", self.name.encode()),
        ]
        if node is not None:
            headers.append((b"X-Foobar-DB", node.role.encode()))
        return Response(status, headers + (extra or []), json_body(data))

    def error_page(self, status: int, message: str, detail: Any = None) -> Response:
        """Every error as JSON, the core's own (400, 413, 431...) included."""
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        body: dict[str, Any] = {"error": phrase, "status": status}
        if message and status < 500:
            body["message"] = message
        if detail is not None:
            body["detail"] = detail
        return self.response(status, body)

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        path = request.path.decode("latin-1")
        route_name = "unmatched"
        try:
            for pattern, name, methods in self.routes:
                match = pattern.fullmatch(path)
                if match is None:
                    continue
                route_name = name
                method = "GET" if request.method == "HEAD" and "GET" in methods else request.method
                handler = methods.get(method)
                if handler is None:
                    response = self.error_page(405, f"{request.method} is not allowed here")
                    response.headers.append((b"Allow", ", ".join(sorted(methods)).encode()))
                    break
                response = await handler(request, match)
                break
            else:
                response = self.error_page(404, "no such resource")
        except DatabaseUnavailable as exc:
            log.warning("event=database_unavailable route=%s reason=%r", route_name, str(exc))
            response = self.error_page(503, "the database is unavailable, retry shortly")
            response.headers.append((b"Retry-After", str(exc.retry_after).encode()))
        except ApiError as exc:
            response = self.error_page(exc.status, str(exc), exc.detail)
        self.requests.values[(request.method, route_name, response.status)] += 1
        self.latency.labels(route_name).observe(time.perf_counter() - started)
        return response

    @staticmethod
    def gtid_of(request: Request) -> str | None:
        token = request.header(b"x-foobar-gtid")
        if token is None:
            for cookie in hdrs.get_all(request.headers, b"cookie"):
                for part in cookie.split(b";"):
                    name, _, value = part.strip().partition(b"=")
                    if name == GTID_COOKIE.encode():
                        token = value
        if token is None:
            return None
        text = token.decode("latin-1")
        return text if len(text) <= MAX_GTID_TOKEN and GTID_PATTERN.fullmatch(text) else None

    def gtid_headers(self, gtid: str | None) -> hdrs.Headers:
        if not gtid:
            return []
        cookie = (
            f"{GTID_COOKIE}={gtid}; Path=/; Max-Age={GTID_COOKIE_SECONDS}; SameSite=Lax; HttpOnly"
        )
        return [(b"X-Foobar-GTID", gtid.encode()), (b"Set-Cookie", cookie.encode())]

    @staticmethod
    async def json_of(request: Request) -> Any:
        content_type = (request.header(b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            raise ApiError(415, "send the body as application/json")
        try:
            return json.loads(await request.body.read())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}") from exc

    @staticmethod
    def field_errors(exc: ValidationError) -> list[dict[str, str]]:
        return [
            {
                "field": ".".join(str(part) for part in error["loc"]) or "body",
                "message": error["msg"],
            }
            for error in exc.errors()
        ]

    # routes

    async def list_posts(self, request: Request, match: re.Match[str]) -> Response:
        query = parse_qs(request.query.decode("latin-1"), keep_blank_values=True)
        problems = []
        limit = DEFAULT_LIMIT
        before = None
        if "limit" in query:
            value = query["limit"][-1]
            if value.isdigit() and 1 <= int(value) <= MAX_LIMIT:
                limit = int(value)
            else:
                problems.append({"field": "limit", "message": f"an integer from 1 to {MAX_LIMIT}"})
        if "before" in query:
            value = query["before"][-1]
            if value.isdigit() and len(value) <= 18:
                before = int(value)
            else:
                problems.append({"field": "before", "message": "a post id"})
        if problems:
            raise ApiError(422, "invalid query parameters", problems)
        page, node = await posts.list_posts(self.router, limit, before, self.gtid_of(request))
        return self.response(200, page, node)

    async def get_post(self, request: Request, match: re.Match[str]) -> Response:
        post, node = await posts.get_post(self.router, int(match[1]), self.gtid_of(request))
        if post is None:
            response = self.error_page(404, "no such post")
            response.headers.append((b"X-Foobar-DB", node.role.encode()))
            return response
        return self.response(200, post, node)

    async def create_post(self, request: Request, match: re.Match[str]) -> Response:
        data = await self.json_of(request)
        key = request.header(b"idempotency-key")
        if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
            raise ApiError(
                422,
                "invalid Idempotency-Key",
                [{"field": "Idempotency-Key", "message": f"1 to {MAX_IDEMPOTENCY_KEY} characters"}],
            )
        try:
            new = NewPost.model_validate(data)
        except ValidationError as exc:
            raise ApiError(422, "invalid post", self.field_errors(exc)) from exc
        try:
            post, created, gtid = await posts.create_post(
                self.router, new, key.decode("latin-1") if key is not None else None
            )
        except posts.KeyReused as exc:
            raise ApiError(422, "this Idempotency-Key was used with a different post") from exc
        extra = [(b"Location", f"/api/posts/{post.id}".encode()), *self.gtid_headers(gtid)]
        if not created:
            extra.append((b"Idempotent-Replayed", b"true"))
        return self.response(201, post, self.router.primary, extra)

    async def like(self, request: Request, match: re.Match[str]) -> Response:
        try:
            likes, gtid = await posts.like(self.router, int(match[1]))
        except posts.NotFound as exc:
            raise ApiError(404, "no such post") from exc
        return self.response(200, likes, self.router.primary, self.gtid_headers(gtid))

    async def healthz(self, request: Request, match: re.Match[str]) -> Response:
        usable, nodes = self.router.health()
        return self.response(
            200 if usable else 503, {"app": self.name, "usable": usable, "nodes": nodes}
        )
