"""The Date field: the wall clock's second, read once a second."""

from __future__ import annotations

import pytest

from foobar.http import writer


def test_the_date_field_follows_the_wall_clock_by_the_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wall, monotonic = [1_764_172_253.9], [100.0]
    reads: list[float] = []

    def read_wall() -> float:
        reads.append(wall[0])
        return wall[0]

    monkeypatch.setattr(writer.time, "time", read_wall)
    monkeypatch.setattr(writer, "_monotonic", lambda: monotonic[0])
    monkeypatch.setattr(writer, "_DATE_CACHE", [-1.0, b""])
    assert writer.date_field() == b"Date: Wed, 26 Nov 2025 15:50:53 GMT\r\n"
    monotonic[0], wall[0] = 100.099, 1_764_172_300.0  # the second holds 0.1 s more
    assert writer.date_field() == b"Date: Wed, 26 Nov 2025 15:50:53 GMT\r\n"
    assert len(reads) == 1  # the wall clock is not read within the second
    monotonic[0], wall[0] = 100.1, 1_764_172_254.0
    assert writer.date_field() == b"Date: Wed, 26 Nov 2025 15:50:54 GMT\r\n"
    assert len(reads) == 2


def test_a_wall_clock_set_back_shows_within_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wall clock is read again when the monotonic second ends, whatever it says."""
    wall, monotonic = [1_764_172_253.5], [100.0]
    monkeypatch.setattr(writer.time, "time", lambda: wall[0])
    monkeypatch.setattr(writer, "_monotonic", lambda: monotonic[0])
    monkeypatch.setattr(writer, "_DATE_CACHE", [-1.0, b""])
    assert writer.date_field() == b"Date: Wed, 26 Nov 2025 15:50:53 GMT\r\n"
    wall[0] = 1_764_172_200.0  # set back by 53.5 s
    assert writer.date_field() == b"Date: Wed, 26 Nov 2025 15:50:53 GMT\r\n"
    monotonic[0] = 100.5  # the second it showed has ended, by the monotonic clock
    assert writer.date_field() == b"Date: Wed, 26 Nov 2025 15:50:00 GMT\r\n"
