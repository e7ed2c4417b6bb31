"""What the board's API accepts and returns, validated by pydantic."""

from __future__ import annotations

import datetime
import unicodedata
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints


def no_control_characters(text: str) -> str:
    """Printable text only; a body may have line breaks and tabs."""
    for character in text:
        if character in "\n\r\t":
            continue
        if unicodedata.category(character) in ("Cc", "Cf", "Cs", "Co"):
            raise ValueError(f"control character U+{ord(character):04X} is not allowed")
    return text


def single_line(text: str) -> str:
    if "\n" in text or "\r" in text or "\t" in text:
        raise ValueError("must be one line")
    return text


Author = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=40),
    AfterValidator(no_control_characters),
    AfterValidator(single_line),
]
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(no_control_characters),
    AfterValidator(single_line),
]
Body = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=10_000),
    AfterValidator(no_control_characters),
]


class NewPost(BaseModel):
    model_config = ConfigDict(extra="forbid")

    author: Author
    title: Title
    body: Body


def as_utc(moment: datetime.datetime) -> datetime.datetime:
    """The database hands back naive UTC times (the session's time_zone is +00:00)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


class Post(BaseModel):
    id: int
    author: str
    title: str
    body: str
    likes: int
    created_at: Annotated[datetime.datetime, AfterValidator(as_utc)]


class PostPage(BaseModel):
    posts: list[Post]
    # the `before` to ask for the next (older) page; null on the last page
    next_before: int | None


class Likes(BaseModel):
    id: int
    likes: int
