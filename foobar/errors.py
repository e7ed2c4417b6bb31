"""The root of foobar's exception tree.

Every error foobar raises on purpose is a `FoobarError`; foreign exceptions (OSError,
httptools, aiomysql) are translated where they enter, with `raise ... from exc`, so a caller
catches one family and a client never sees a traceback. The whole tree:

    FoobarError
    ├── ConfigError                  bad settings: every problem, each with its key
    ├── HTTPError                    carries `status`, the response the peer should get
    │   ├── ProtocolError            400: a malformed message (foobar.http.errors)
    │   │   ├── HeadersTooLarge      431
    │   │   └── VersionNotSupported  505
    │   ├── BodyTooLarge             413
    │   ├── RequestTimeout           408
    │   ├── ConnectionClosed         499 (nginx's code): the client went away mid-request
    │   ├── DatabaseUnavailable      503 + Retry-After: no database node can take it
    │   │                            (foobar.app.errors)
    │   └── UpstreamError            502: an upstream server failed us
    │       ├── UpstreamConnectError     refused / unreachable: no byte was sent
    │       ├── UpstreamClosed           reset or closed before a complete response
    │       ├── UpstreamProtocolError    an upstream answered with a malformed message
    │       └── UpstreamTimeout          504
    │           ├── ConnectTimeout       (also an UpstreamConnectError: nothing was sent)
    │           └── ReadTimeout
    ├── SchemaError                  foobar.app: the schema could not be migrated
    └── DbError                      foobar.db: a server cannot be set up, reached or
                                     switched over (foobar.db.errors)

Each tier adds its own branches under `FoobarError` beside these.
"""

from __future__ import annotations


class FoobarError(Exception):
    """Base class of every error foobar raises on purpose."""


class ConfigError(FoobarError):
    """Settings that cannot be used; `problems` holds one `(key, message)` per mistake."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {message}" for key, message in problems))
