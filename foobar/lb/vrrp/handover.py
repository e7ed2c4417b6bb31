"""A planned switch that fails no request: while a stopping master finishes what it has in
flight, new connections to the floating addresses are held back, not refused.

Why not just move the address first: a client's ARP cache maps the address to one
machine, so the moment the new master's gratuitous ARP lands, every packet of every open
connection goes to the new master, whose kernel answers it with a reset. So the stopping
master first drops new SYNs to its floating addresses in silence (an nftables table of
its own, ahead of the operator's rules), drains, and only then hands the addresses over;
a client whose SYN was dropped sends it again after its retransmission timeout (1 s on
Linux), by then to the new master.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence

log = logging.getLogger("foobar.lb.vrrp")

TABLE = "foobar_vrrp_handover"
# before the operator's filter (priority 0), which accepts web traffic
PRIORITY = -10


def rules(addresses: Sequence[str]) -> str:
    targets = ", ".join(addresses)
    return (
        f"table ip {TABLE} {{\n"
        f"    chain input {{\n"
        f"        type filter hook input priority {PRIORITY}; policy accept;\n"
        f"        ip daddr {{ {targets} }} tcp flags & (syn | ack) == syn drop\n"
        f"    }}\n"
        f"}}\n"
    )


def _nft(script: str) -> subprocess.CompletedProcess[str] | None:
    if shutil.which("nft") is None:
        return None
    try:
        return subprocess.run(
            ["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def hold_new_connections(addresses: Sequence[str]) -> bool:
    """Drop new connections to `addresses` until release(); whether it worked (without nft,
    the switch still happens, and connections in flight at that moment may fail)."""
    result = _nft(rules(addresses))
    if result is None or result.returncode != 0:
        reason = result.stderr.strip() if result is not None else "nft is not installed"
        log.warning("event=vrrp_hold_failed reason=%r", reason)
        return False
    log.info("event=vrrp_holding_new_connections addresses=%s", ",".join(addresses))
    return True


def release() -> None:
    """Remove the table (also at start: a balancer killed mid-switch left it)."""
    _nft(f"table ip {TABLE} {{}}\ndelete table ip {TABLE}\n")
