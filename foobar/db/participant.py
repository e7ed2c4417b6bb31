"""What the witness and each agent share: one durable epoch state, the rule for taking a
newer one, how long each database server has been silent, and the two admin routes peers
call (`GET /cluster`, `POST /epoch`).

The rule (`Participant.accept`) is the whole of the consensus: a state is taken when it
belongs to this cluster and supersedes the stored one (`EpochState.supersedes`). When
this participant is asked for its *vote* (the witness, by an agent that wants to change
the primary or degrade), it also checks with its own eyes: a new primary only when the
current one has not greeted it for `failover_after` and the cluster is not degraded; a
degrade only when no replica has greeted it for `failover_after`. Since each epoch is
stored before it is answered, two claims for the same epoch cannot both win: the
second no longer supersedes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from foobar.admin import json_response
from foobar.db.epoch import EpochFile, EpochState
from foobar.db.errors import DbError
from foobar.http.server import Request, Response

log = logging.getLogger("foobar.db.epoch")

Clock = Callable[[], float]


class Participant:
    def __init__(
        self,
        name: str,
        cluster: str,
        epoch_file: EpochFile,
        instances: list[str],
        failover_after: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self.cluster = cluster
        self.file = epoch_file
        self.state = epoch_file.load()
        self.failover_after = failover_after
        self.clock = clock
        started = clock()
        # Silence is counted from our own start: a participant that just came up has not
        # yet seen enough to vote anyone out.
        self.last_seen: dict[str, float] = dict.fromkeys(instances, started)

    # what this participant has seen

    def saw(self, instance: str, alive: bool) -> None:
        if alive:
            self.last_seen[instance] = self.clock()

    def unseen(self, instance: str) -> float:
        return self.clock() - self.last_seen.get(instance, self.clock())

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cluster": self.cluster,
            "state": self.state.as_dict(),
            "unseen": {name: round(self.unseen(name), 3) for name in self.last_seen},
        }

    # the rule

    def refusal(
        self, cluster: str, state: EpochState, vote: bool, planned: bool = False
    ) -> str | None:
        """Why `state` is not taken, or None when it may be."""
        current = self.state
        if cluster != self.cluster:
            return f"cluster {cluster!r} is not this cluster ({self.cluster!r})"
        if state.conflicts(current):
            return f"epoch {state.epoch} already belongs to {current.primary}, not {state.primary}"
        if state == current:
            return None
        if not state.supersedes(current):
            return f"stale: epoch {state.epoch} is not newer than epoch {current.epoch}"
        if not vote or current.primary is None:
            return None
        if state.primary != current.primary:
            if current.degraded:
                return (
                    f"replication is degraded since epoch {current.epoch} ({current.reason}): "
                    f"{state.primary} may lack acknowledged writes, no automatic failover"
                )
            if planned:
                return None  # the current primary's agent hands over, fenced first
            silent = self.unseen(current.primary)
            if silent < self.failover_after:
                return f"{current.primary} greeted {self.name} {silent:.1f}s ago"
        elif state.degraded and not current.degraded:
            replicas = [name for name in self.last_seen if name != current.primary]
            seen = [name for name in replicas if self.unseen(name) < self.failover_after]
            if seen:
                return f"replica {', '.join(seen)} still greets {self.name}"
        return None

    def accept(
        self, cluster: str, state: EpochState, vote: bool, planned: bool = False
    ) -> str | None:
        """Store `state` when the rule allows; the refusal's reason otherwise."""
        reason = self.refusal(cluster, state, vote, planned)
        if reason is not None:
            return reason
        if state != self.state:
            self.adopt(state)
        return None

    def adopt(self, state: EpochState) -> None:
        """Store a state a majority already decided (durably first, then in memory)."""
        self.file.store(state)
        previous, self.state = self.state, state
        log.info(
            "event=epoch name=%s epoch=%d primary=%s degraded=%s was=%d/%s reason=%r",
            self.name,
            state.epoch,
            state.primary,
            state.degraded,
            previous.epoch,
            previous.primary,
            state.reason,
        )

    # the admin routes

    def routes(self, vote: bool) -> Mapping[tuple[str, bytes], Any]:
        async def cluster_view(request: Request) -> Response:
            return json_response(200, self.view())

        async def take(request: Request) -> Response:
            try:
                data = json.loads(await request.body.read())
                cluster = str(data["cluster"])
                state = EpochState.from_dict(data["state"])
                planned = data.get("planned") is True
            except (ValueError, KeyError, TypeError) as exc:
                return json_response(400, {"error": f"expected {{cluster, state}}: {exc}"})
            try:
                reason = self.accept(cluster, state, vote, planned)
            except DbError as exc:
                reason = str(exc)
            if reason is not None:
                log.warning(
                    "event=epoch_refused name=%s offered=%d/%s reason=%r",
                    self.name,
                    state.epoch,
                    state.primary,
                    reason,
                )
                return json_response(409, {"error": reason, **self.view()})
            return json_response(200, self.view())

        return {("GET", b"/cluster"): cluster_view, ("POST", b"/epoch"): take}
