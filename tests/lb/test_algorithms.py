"""Each algorithm's distribution, order and stability, as pure picks."""

from __future__ import annotations

import collections
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from foobar.lb import algorithms
from foobar.lb.algorithms import RequestKeys
from foobar.lb.servers import Backend
from foobar.lb.settings import BackendSettings

PICKS = 10_000


@dataclass
class Fake:
    name: str
    weight: int = 1
    active: int = 0


def share(counts: collections.Counter[str], name: str) -> float:
    return counts[name] / sum(counts.values())


def run(
    algorithm: algorithms.Algorithm, servers: Sequence[Fake], hold: bool = False
) -> collections.Counter[str]:
    algorithm.update(servers)
    counts: collections.Counter[str] = collections.Counter()
    for n in range(PICKS):
        picked = algorithm.pick(servers, RequestKeys(f"10.0.{n // 256}.{n % 256}", b"/p%d" % n))
        assert isinstance(picked, Fake)
        counts[picked.name] += 1
        if hold:  # connections held open: what leastconn balances
            picked.active += 1
    return counts


@pytest.mark.parametrize(
    "name", ["roundrobin", "static-rr", "leastconn", "random", "source", "uri"]
)
def test_weights_within_two_percent(name: str) -> None:
    servers = [Fake("a", 5), Fake("b", 3), Fake("c", 2)]
    counts = run(algorithms.create(name), servers, hold=name == "leastconn")
    for server in servers:
        assert abs(share(counts, server.name) - server.weight / 10) < 0.02, (name, counts)


def test_smooth_roundrobin_order() -> None:
    algorithm = algorithms.create("roundrobin")
    servers = [Fake("a", 3), Fake("b", 1)]
    algorithm.update(servers)
    order = [algorithm.pick(servers, RequestKeys("x")).name for _ in range(8)]  # type: ignore[union-attr]
    assert order == ["a", "a", "b", "a"] * 2
    static = algorithms.create("static-rr")
    assert [static.pick(servers, RequestKeys("x")).name for _ in range(4)] == ["a", "a", "a", "b"]  # type: ignore[union-attr]


def test_leastconn_follows_held_connections() -> None:
    algorithm = algorithms.create("leastconn")
    servers = [Fake("a", active=3), Fake("b", active=1), Fake("c", active=2)]
    assert algorithm.pick(servers, RequestKeys("x")).name == "b"  # type: ignore[union-attr]
    servers[1].active = 5
    assert algorithm.pick(servers, RequestKeys("x")).name == "c"  # type: ignore[union-attr]
    # ties go round-robin
    tied = [Fake("a"), Fake("b")]
    assert {algorithm.pick(tied, RequestKeys("x")).name for _ in range(4)} == {"a", "b"}  # type: ignore[union-attr]


def test_first_fills_in_order() -> None:
    servers = [Fake("a"), Fake("b")]
    assert algorithms.create("first").pick(servers, RequestKeys("x")).name == "a"  # type: ignore[union-attr]
    assert algorithms.create("first").pick(servers[1:], RequestKeys("x")).name == "b"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("spec", "request_for"),
    [
        ("source", lambda key: RequestKeys(key)),
        ("uri", lambda key: RequestKeys("1.2.3.4", f"/{key}?q=1".encode())),
        (
            "hdr(X-User)",
            lambda key: RequestKeys(
                "1.2.3.4", b"/", lambda name: key.encode() if name == b"x-user" else None
            ),
        ),
    ],
)
def test_hashing_is_stable_per_key(spec: str, request_for) -> None:  # type: ignore[no-untyped-def]
    algorithm = algorithms.create(spec)
    servers = [Fake(name) for name in "abcde"]
    algorithm.update(servers)
    for key in ("alice", "bob", "carol"):
        picks = {algorithm.pick(servers, request_for(key)).name for _ in range(20)}  # type: ignore[union-attr]
        assert len(picks) == 1


@pytest.mark.parametrize("spec", ["source", "uri", "hdr(X-User)"])
def test_consistent_hashing_moves_about_one_nth(spec: str) -> None:
    servers = [Fake(name) for name in "abcdefgh"]
    n = len(servers)
    before_algorithm, after_algorithm = algorithms.create(spec), algorithms.create(spec)
    before_algorithm.update(servers)
    remaining = servers[:-1]
    after_algorithm.update(remaining)

    def request(key: int) -> RequestKeys:
        text = f"key-{key}"
        return RequestKeys(text, f"/{text}".encode(), lambda name: text.encode())

    moved = 0
    for key in range(PICKS):
        before = before_algorithm.pick(servers, request(key))
        after = after_algorithm.pick(remaining, request(key))
        assert before is not None and after is not None
        moved += before.name != after.name
    assert moved / PICKS <= 1 / n + 0.05, moved


def test_hdr_without_the_header_falls_back_to_roundrobin() -> None:
    algorithm = algorithms.create("hdr(X-User)")
    servers = [Fake("a"), Fake("b")]
    algorithm.update(servers)
    assert {algorithm.pick(servers, RequestKeys("1.2.3.4")).name for _ in range(4)} == {"a", "b"}  # type: ignore[union-attr]


def test_random_two_never_picks_the_busier_of_its_draws() -> None:
    algorithm = algorithms.create("random")
    assert isinstance(algorithm, algorithms.Random)
    draws: list[list[Fake]] = []
    choices = algorithm._random.choices

    def recording(population, weights, k):  # type: ignore[no-untyped-def]
        drawn = choices(population, weights, k=k)
        draws.append(drawn)
        return drawn

    algorithm._random.choices = recording  # type: ignore[method-assign]
    servers = [Fake(name, active=n) for n, name in enumerate("abcdef")]
    for _ in range(2000):
        picked = algorithm.pick(servers, RequestKeys("x"))
        assert picked is not None
        assert picked.active == min(server.active for server in draws[-1])
    assert all(len(drawn) == 2 for drawn in draws)


def test_unknown_algorithm_and_bad_argument() -> None:
    with pytest.raises(ValueError, match="unknown algorithm 'nope'"):
        algorithms.create("nope")
    with pytest.raises(ValueError, match="hdr needs a header name"):
        algorithms.create("hdr")


def test_plugin_registered_through_an_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A third party's package: a module and its dist-info with the entry point."""
    (tmp_path / "lastpick.py").write_text(
        textwrap.dedent("""
        from foobar.lb.algorithms import Algorithm

        class AlwaysLast(Algorithm):
            name = "always-last"

            def pick(self, candidates, request):
                return candidates[-1] if candidates else None
    """)
    )
    info = tmp_path / "lastpick-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lastpick\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[foobar.lb.algorithms]\nalways-last = lastpick:AlwaysLast\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "always-last" in algorithms.registry()
    servers = [Fake("a"), Fake("b"), Fake("c")]
    assert algorithms.create("always-last").pick(servers, RequestKeys("x")).name == "c"  # type: ignore[union-attr]
    # and the balancer's settings accept it by name
    from foobar.lb.settings import LbSettings

    settings = LbSettings(backend=["127.0.0.1:1"], algorithm="always-last", bind="127.0.0.1:0")  # type: ignore[list-item,arg-type]
    assert settings.backends[0].algorithm == "always-last"
    sys.modules.pop("lastpick", None)


def test_backend_plans_turns_and_plans_again_on_every_change() -> None:
    """A request-independent algorithm's period is planned once per usable set: a
    server's state, weight, health or ejection (and its end) all change the plan."""
    backend = Backend(
        BackendSettings(
            name="b", servers=["a=127.0.0.1:1,weight=3", "b=127.0.0.1:2", "c=127.0.0.1:3"]
        )
    )

    def order(count: int) -> list[str]:
        names = []
        for _ in range(count):
            server = backend.take_now(RequestKeys("x"), time.monotonic())
            assert server is not None
            backend.release(server)
            names.append(server.name)
        return names

    assert order(10) == ["a", "b", "a", "c", "a"] * 2  # smooth: 3, 1, 1
    a, b, c = backend.servers
    b.state = "maint"
    assert order(8) == ["a", "a", "c", "a"] * 2
    b.state = "ready"
    c.weight = 0
    assert order(4) == ["a", "a", "b", "a"]
    c.weight = 1
    a.set_health(False, "test")
    assert order(4) == ["b", "c"] * 2
    a.set_health(True, "test")
    for _ in range(backend.settings.observe_errors):
        backend.failed(a, "response")
    assert set(order(6)) == {"b", "c"}
    a.ejected_until = time.monotonic() + 0.05  # the ejection ends by itself
    time.sleep(0.06)
    assert set(order(5)) == {"a", "b", "c"}
    for server in backend.servers:
        server.state = "maint"
    for _ in range(3):  # the empty plan made by the first holds for the next
        assert backend.take_now(RequestKeys("x"), time.monotonic()) is None
