"""The balancer's virtual routers together: started and stopped as one, told by tracking
whether the balancer can serve, and reported on /status, /metrics and the stats page.

Tracking asks `can_serve()` every TRACK_INTERVAL; a reason (no usable backend, a listener
down) makes every tracked instance step down until it clears.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from foobar.lb.settings import VrrpSettings
from foobar.lb.vrrp import handover, link, packet
from foobar.lb.vrrp.machine import State
from foobar.lb.vrrp.speaker import Speaker

log = logging.getLogger("foobar.lb.vrrp")

# Health checks change a server's state at most every `inter` (2 s by default): a quarter
# second of tracking delay is small beside that.
TRACK_INTERVAL = 0.25


class VrrpGroup(Collector):
    def __init__(self, settings: VrrpSettings, can_serve: Callable[[], str | None]) -> None:
        self.settings = settings
        self.can_serve = can_serve
        self.speakers: list[Speaker] = []
        self._tracker: asyncio.TimerHandle | None = None

    def start(self) -> None:
        handover.release()  # a balancer killed in the middle of a switch left it
        for instance in self.settings.instances:
            where = link.find_link(instance.addresses[0])
            speaker = Speaker(instance, self.settings, where)
            speaker.start()
            self.speakers.append(speaker)
        self._track()

    def _track(self) -> None:
        reason = self.can_serve()
        for speaker in self.speakers:
            if speaker.settings.track:
                speaker.set_fault(reason)
        self._tracker = asyncio.get_running_loop().call_later(TRACK_INTERVAL, self._track)

    async def stop(self) -> None:
        """Priority 0 from every instance this balancer is master of, addresses removed
        once the new masters have spoken (all instances at once)."""
        if self._tracker is not None:
            self._tracker.cancel()
            self._tracker = None
        await asyncio.gather(*(speaker.stop() for speaker in self.speakers))
        log.info("event=vrrp_stopped instances=%d", len(self.speakers))

    def held_addresses(self) -> list[str]:
        """The floating addresses this balancer holds now (as master)."""
        return [
            address
            for speaker in self.speakers
            if speaker.machine.state is State.MASTER
            for address in speaker.settings.addresses
        ]

    def describe(self) -> list[dict[str, Any]]:
        return [speaker.describe() for speaker in self.speakers]

    def collect(self) -> Iterator[Metric]:
        yield from families(self.speakers)


def families(speakers: Sequence[Speaker]) -> Iterator[Metric]:
    """The VRRP metric families, with a sample per speaker (none: a balancer without
    VRRP still declares them, so that the alert rules naming them apply to every one)."""
    labels = ["instance"]
    state = GaugeMetricFamily(
        "foobar_lb_vrrp_state", "VRRP state: 0 init, 1 backup, 2 master", labels=labels
    )
    priority = GaugeMetricFamily(
        "foobar_lb_vrrp_priority",
        "priority advertised now (0 while stepped down)",
        labels=labels,
    )
    transitions = CounterMetricFamily(
        "foobar_lb_vrrp_master_transitions", "times this balancer became master", labels=labels
    )
    dropped = CounterMetricFamily(
        "foobar_lb_vrrp_adverts_dropped",
        "adverts dropped, never acted on, by reason",
        labels=["instance", "reason"],
    )
    for speaker in speakers:
        key = [speaker.name]
        state.add_metric(key, int(speaker.machine.state))
        priority.add_metric(key, speaker.machine.priority)
        transitions.add_metric(key, speaker.machine.master_transitions)
        for reason in packet.DROP_REASONS:
            dropped.add_metric([speaker.name, reason], speaker.dropped[reason])
    yield from (state, priority, transitions, dropped)


class Declared(Collector):
    """The VRRP families without samples, for a balancer that runs no VRRP."""

    def collect(self) -> Iterator[Metric]:
        yield from families([])


def section(rows: list[dict[str, Any]]) -> str:
    """The stats page's VRRP table."""
    if not rows:
        return ""
    escape = html.escape
    lines = [
        "<h2>vrrp</h2><table><tr><th>instance</th><th>vrid</th><th>state</th><th>priority</th>"
        "<th>addresses</th><th>interface</th><th>master</th><th>interval</th><th>preempt</th>"
        "<th>to master</th><th>dropped</th><th>fault</th><th>last change</th></tr>"
    ]
    for row in rows:
        css = {"master": "up", "backup": "drain"}.get(row["state"], "down")
        dropped = sum(row["adverts_dropped"].values())
        since = time.strftime("%H:%M:%S", time.localtime(row["last_change"]))
        lines.append(
            f"<tr class='{css}'><td>{escape(row['instance'])}</td>"
            f"<td>{row['virtual_router_id']}</td><td>{row['state']}</td>"
            f"<td>{row['priority']}</td><td>{escape(', '.join(row['addresses']))}</td>"
            f"<td>{escape(row['interface'])}</td><td>{escape(str(row['master'] or ''))}</td>"
            f"<td>{row['advert_interval']}s</td><td>{'yes' if row['preempt'] else 'no'}</td>"
            f"<td>{row['master_transitions']}</td><td>{dropped}</td>"
            f"<td>{escape(row['fault'] or '')}</td><td>{since}</td></tr>"
        )
    lines.append("</table>")
    return "".join(lines)
