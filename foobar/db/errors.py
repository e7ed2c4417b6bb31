"""foobar.db's branch of the FoobarError tree (drawn in `foobar.errors`)."""

from __future__ import annotations

from foobar.errors import FoobarError


class DbError(FoobarError):
    """A database server cannot be set up, started, reached or switched over; the
    message is one line a person can act on."""
