"""The epoch state, its file and the rule for taking a newer one: no database needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foobar.db.epoch import EpochFile, EpochState
from foobar.db.errors import DbError
from foobar.db.participant import Participant
from foobar.db.replication import errant_gtids

FIRST = EpochState().next("db1", "", "first primary", 0.0)  # epoch 1, degraded
STEADY = FIRST.with_degraded(False, "replica acknowledges", 1.0)


def test_file_round_trip_and_never_back(tmp_path: Path) -> None:
    file = EpochFile(tmp_path / "epoch.json")
    assert file.load() == EpochState()
    file.store(FIRST)
    file.store(STEADY)
    second = STEADY.next("db2", "0-1-9", "failover", 2.0)
    file.store(second)
    assert file.load() == second
    assert second.history[-1] == (2, "db2", "0-1-9", "failover")
    with pytest.raises(DbError, match="refusing to replace epoch 2"):
        file.store(STEADY)
    assert file.load() == second  # untouched
    assert not (tmp_path / "epoch.json.tmp").exists()
    assert (tmp_path / "epoch.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "text",
    ["", "{", "[]", '{"epoch": -1, "primary": null, "degraded": false}', '{"epoch": 1}'],
)
def test_a_wrong_file_is_one_clear_error_and_left_alone(tmp_path: Path, text: str) -> None:
    path = tmp_path / "epoch.json"
    path.write_text(text)
    file = EpochFile(path)
    with pytest.raises(DbError, match="is not a valid epoch file"):
        file.load()
    with pytest.raises(DbError):
        file.store(FIRST)
    assert path.read_text() == text


@pytest.mark.parametrize(
    ("offered", "current", "supersedes"),
    [
        (FIRST, EpochState(), True),  # the first primary registers
        (EpochState(), FIRST, False),
        (STEADY, FIRST, True),  # recovery: same epoch and primary
        (FIRST, STEADY, True),  # degrade
        (STEADY, STEADY, False),
        (STEADY.next("db2", "", "f", 0), STEADY, True),
        (STEADY, STEADY.next("db2", "", "f", 0), False),  # never back
        (EpochState(1, "db2", True), FIRST, False),  # another primary, same epoch
    ],
)
def test_supersedes(offered: EpochState, current: EpochState, supersedes: bool) -> None:
    assert offered.supersedes(current) is supersedes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def witness(tmp_path: Path, state: EpochState) -> tuple[Participant, Clock]:
    (tmp_path / "epoch.json").write_text(json.dumps(state.as_dict()))
    clock = Clock()
    return Participant(
        "witness", "foobar", EpochFile(tmp_path / "epoch.json"), ["db1", "db2"], 3.0, clock
    ), clock


def test_witness_votes_for_a_failover_only_when_it_too_lost_the_primary(tmp_path: Path) -> None:
    participant, clock = witness(tmp_path, STEADY)
    claim = STEADY.next("db2", "0-1-5", "failover", 0.0)
    assert "greeted witness 0.0s ago" in str(participant.accept("foobar", claim, vote=True))
    clock.now += 3.0
    participant.saw("db2", True)
    assert participant.accept("other", claim, vote=True) == (
        "cluster 'other' is not this cluster ('foobar')"
    )
    assert participant.accept("foobar", claim, vote=True) is None
    assert EpochFile(tmp_path / "epoch.json").load() == claim
    # a second claim for the same epoch (the old primary's own) loses
    rival = EpochState(2, "db1", True)
    assert "already belongs to db2" in str(participant.accept("foobar", rival, vote=True))


def test_no_failover_while_degraded_and_degrade_needs_a_silent_replica(tmp_path: Path) -> None:
    participant, clock = witness(tmp_path, STEADY)
    degraded = STEADY.with_degraded(True, "replica db2 silent", 1.0)
    assert "replica db2 still greets" in str(participant.accept("foobar", degraded, vote=True))
    clock.now += 3.0
    participant.saw("db1", True)
    assert participant.accept("foobar", degraded, vote=True) is None
    clock.now += 10.0
    claim = degraded.next("db2", "", "failover", 0.0)
    assert "no automatic failover" in str(participant.accept("foobar", claim, vote=True))
    # an agent's copy (no vote) takes what the majority decided
    participant.state = STEADY
    assert participant.accept("foobar", degraded, vote=False) is None


@pytest.mark.parametrize(
    ("binlog_state", "server_id", "start", "errant"),
    [
        ("0-1-10", 1, "0-1-10", []),  # everything replicated
        ("0-1-12", 1, "0-1-10", ["0-1-11..0-1-12"]),
        ("0-1-11", 1, "0-1-10", ["0-1-11"]),
        ("0-1-10,0-2-30", 1, "0-1-10", []),  # later writes of the new primary are not ours
        ("0-1-12,0-2-30", 1, "0-2-11", ["0-1-12"]),  # ours past where the new one began
        ("0-1-5", 1, "", ["0-1-1..0-1-5"]),
    ],
)
def test_errant_gtids(binlog_state: str, server_id: int, start: str, errant: list[str]) -> None:
    assert errant_gtids(binlog_state, server_id, start) == errant


AGENT = {
    "agent": "db1",
    "initial_primary": "db1",
    "witness": "10.0.0.1:9104",
    "peers": ["db2=10.0.0.6:9103"],
    "app_password": "a",
    "replication_password": "r",
    "admin_token": "the-agents-shared-token",
    "instances": [
        {"name": "db1", "host": "10.0.0.3", "port": 3306, "server_id": 1},
        {"name": "db2", "host": "10.0.0.6", "port": 3306, "server_id": 2},
    ],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"agent": "db3"}, "agent 'db3' is not an instance"),
        ({"witness": None}, "agent mode needs witness"),
        ({"peers": ["db1=10.0.0.3:9103"]}, "cannot be its own peer"),
        ({"peers": []}, "one peer per other instance"),
        ({"app_password": None}, "needs app_password and replication_password"),
        ({"peers": ["db2"]}, "expected NAME=HOST:PORT"),
        ({"admin_token": None}, "agent mode needs the admin token"),
    ],
)
def test_agent_settings_refused(change: dict[str, object], message: str) -> None:
    from pydantic import ValidationError

    from foobar.db.settings import DbSettings

    assert DbSettings.model_validate(AGENT).peers[0].admin == ("10.0.0.6", 9103)
    with pytest.raises(ValidationError, match=message):
        DbSettings.model_validate({**AGENT, **change})
