"""foobar.app's branch of the FoobarError tree (drawn in `foobar.errors`)."""

from __future__ import annotations

from foobar.errors import FoobarError
from foobar.http.errors import HTTPError


class SchemaError(FoobarError):
    """The schema could not be brought up to date."""


class DatabaseUnavailable(HTTPError):
    """No database node can take this statement now; the client is told when to retry."""

    status = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after
