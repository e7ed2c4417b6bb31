"""How the participants of a cluster (two agents and the witness) see each other and the
database servers.

- `greets(host, port)`: is a MySQL/MariaDB server alive? A live server sends its
  handshake packet as soon as a TCP connection is accepted, with no credentials needed;
  a killed one refuses, a frozen one (SIGSTOP) or a cut-off one stays silent. The witness
  and the agents use the same test, so their votes mean the same thing.
- `view(admin)`: a participant's `GET /cluster` (its name, cluster, epoch state, and how
  long since it last saw each server greet); None when it cannot be reached.
- `offer(admin, state)`: `POST /epoch` a newer state; True when it was stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

from foobar.db.epoch import EpochState
from foobar.errors import FoobarError
from foobar.http.client import PoolConfig, UpstreamPool
from foobar.settings import HostPort

# A peer on the same network answers within milliseconds; one that takes longer than
# this is as good as absent for a decision made every interval.
PEER_TIMEOUT = 1.0


async def greets(host: str, port: int, timeout: float = PEER_TIMEOUT) -> bool:
    """True when a server at host:port sends the first bytes of its handshake in time."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            header = await reader.readexactly(5)  # 3-byte length, sequence, first byte
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    # 0x0a: protocol 10 handshake; 0xff: an error packet ("too many connections"),
    # which a live server sends too.
    return header[4] in (0x0A, 0xFF)


@dataclass(frozen=True)
class View:
    """What one participant said about the cluster."""

    name: str
    cluster: str
    state: EpochState
    unseen: dict[str, float]  # instance -> seconds since it last greeted this participant

    @classmethod
    def from_dict(cls, data: Any) -> View:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        unseen = data.get("unseen", {})
        return cls(
            str(data["name"]),
            str(data["cluster"]),
            EpochState.from_dict(data["state"]),
            {str(name): float(value) for name, value in unseen.items()},
        )


def _headers(admin: HostPort, token: str | None) -> list[tuple[bytes, bytes]]:
    """A change on a peer's admin listener carries the admin token, as JSON (issue 16)."""
    headers = [(b"Host", str(admin).encode()), (b"Content-Type", b"application/json")]
    if token is not None:
        headers.append((b"Authorization", b"Bearer " + token.encode()))
    return headers


async def _call(
    admin: HostPort,
    method: str,
    path: str,
    body: bytes | None = None,
    token: str | None = None,
) -> tuple[int, Any]:
    pool = UpstreamPool(
        admin.host,
        admin.port,
        PoolConfig(connect_timeout=PEER_TIMEOUT, read_timeout=PEER_TIMEOUT),
    )
    try:
        async with asyncio.timeout(PEER_TIMEOUT * 2):
            response = await pool.request(method, path.encode(), _headers(admin, token), body)
            data = await response.read()
        return response.status, json.loads(data)
    finally:
        await pool.close()


async def view(admin: HostPort) -> View | None:
    try:
        status, data = await _call(admin, "GET", "/cluster")
        return View.from_dict(data) if status == 200 else None
    except (FoobarError, OSError, TimeoutError, ValueError, KeyError, TypeError):
        return None


async def offer(
    admin: HostPort,
    cluster: str,
    state: EpochState,
    planned: bool = False,
    *,
    token: str | None,
) -> bool:
    """`planned`: a switchover asked for by the current primary's agent, already fenced.
    `token`: the admin token the participants share."""
    body = json.dumps({"cluster": cluster, "state": state.as_dict(), "planned": planned})
    try:
        status, _ = await _call(admin, "POST", "/epoch", body.encode(), token)
    except (FoobarError, OSError, TimeoutError, ValueError):
        return False
    return status == 200


async def hand_over(
    admin: HostPort,
    cluster: str,
    state: EpochState,
    position: str,
    timeout: float,
    *,
    token: str | None,
) -> tuple[bool, str]:
    """Ask the peer agent to take the primary's role from GTID `position` on; whether it
    did, and why not."""
    body = json.dumps({"cluster": cluster, "state": state.as_dict(), "position": position})
    pool = UpstreamPool(
        admin.host, admin.port, PoolConfig(connect_timeout=PEER_TIMEOUT, read_timeout=timeout)
    )
    try:
        response = await pool.request("POST", b"/takeover", _headers(admin, token), body.encode())
        data = json.loads(await response.read())
    except (FoobarError, OSError, TimeoutError, ValueError) as exc:
        return False, f"{admin}: {exc}"
    finally:
        await pool.close()
    return response.status == 200, str(data.get("error", "")) if isinstance(data, dict) else ""
