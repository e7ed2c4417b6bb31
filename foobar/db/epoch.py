"""The epoch: which instance is the primary, as decided by a majority, and since when.

Every agent and the witness keep one `EpochState` in `<state_dir>/epoch.json`. A new
state replaces the stored one only when it is newer (`EpochState.supersedes`), and the
file is written to a temporary file, fsynced, renamed over the old one and the directory
fsynced, so a crash at any moment leaves either the old state or the new one, never a
torn file and never an older epoch.

One state, three kinds of change:
- a **failover or switchover** takes the next epoch and names a new primary;
- a **degrade** (the majority declared the replica dead: the primary replicates
  asynchronously and no automatic failover is allowed) and its **recovery** keep the
  epoch and the primary and flip `degraded`;
- `history` keeps, per epoch, the primary and the GTID position it started from, so a
  former primary can tell whether it holds transactions the new one lacks.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from foobar.db.errors import DbError
from foobar.files import private_directory

# Enough epochs back for any former primary to find where the next epoch began; older
# entries only grow the file.
HISTORY_KEPT = 100


@dataclass(frozen=True)
class EpochState:
    epoch: int = 0
    primary: str | None = None
    degraded: bool = False
    reason: str = "initial"
    changed_at: float = 0.0  # wall clock, for people reading `status`
    # [epoch, primary, GTID position the primary started from, why], oldest first
    history: tuple[tuple[int, str, str, str], ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["history"] = [list(entry) for entry in self.history]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> EpochState:
        """Raises ValueError (with what is wrong) for anything that is not a state."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            epoch, primary, degraded = data["epoch"], data["primary"], data["degraded"]
            history = tuple(
                (int(entry[0]), str(entry[1]), str(entry[2]), str(entry[3]))
                for entry in data.get("history", [])
            )
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"missing or malformed field: {exc}") from exc
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, not {epoch!r}")
        if primary is not None and not isinstance(primary, str):
            raise ValueError(f"primary must be a name, not {primary!r}")
        if not isinstance(degraded, bool):
            raise ValueError(f"degraded must be true or false, not {degraded!r}")
        return cls(
            epoch,
            primary,
            degraded,
            str(data.get("reason", "")),
            float(data.get("changed_at", 0.0)),
            history,
        )

    def supersedes(self, other: EpochState) -> bool:
        """Whether this state may replace `other`: a later epoch, or the same epoch and
        primary with a change of replication mode (degrade, recovery). Epoch 0 has no
        primary until one registers."""
        if self.epoch > other.epoch:
            return True
        if self.epoch < other.epoch:
            return False
        if other.primary is None:
            return self.primary is not None
        return self.primary == other.primary and self.degraded != other.degraded

    def conflicts(self, other: EpochState) -> bool:
        """Two different primaries in the same epoch: never allowed."""
        return (
            self.epoch == other.epoch
            and None not in (self.primary, other.primary)
            and self.primary != other.primary
        )

    def next(self, primary: str, start_gtid: str, reason: str, now: float) -> EpochState:
        entry = (self.epoch + 1, primary, start_gtid, reason)
        history = (*self.history, entry)[-HISTORY_KEPT:]
        # A new primary has no replica yet that is known to hold its writes.
        return EpochState(self.epoch + 1, primary, True, reason, now, history)

    def with_degraded(self, degraded: bool, reason: str, now: float) -> EpochState:
        return replace(self, degraded=degraded, reason=reason, changed_at=now)

    def started_after(self, epoch: int) -> tuple[int, str, str, str] | None:
        """The first history entry after `epoch`: where the next primary began."""
        return next((entry for entry in self.history if entry[0] > epoch), None)


class EpochFile:
    """The durable copy of one participant's state."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> EpochState:
        """The stored state, the initial one when there is none; a DbError naming the
        file for anything unreadable (it is never overwritten then)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return EpochState()
        except OSError as exc:
            raise DbError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            return EpochState.from_dict(json.loads(text))
        except (json.JSONDecodeError, ValueError) as exc:
            raise DbError(
                f"{self.path} is not a valid epoch file ({exc}); "
                "fix or remove it by hand, foobar.db will not overwrite it"
            ) from exc

    def store(self, state: EpochState) -> None:
        """Write `state` durably; a DbError (and the old file untouched) when it would go
        back to an older epoch."""
        current = self.load()
        if state != current and not state.supersedes(current):
            raise DbError(
                f"refusing to replace epoch {current.epoch} ({current.primary}) "
                f"with epoch {state.epoch} ({state.primary}) in {self.path}"
            )
        private_directory(self.path.parent)  # a state directory: its owner's alone
        temporary = self.path.with_name(self.path.name + ".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(state.as_dict(), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
