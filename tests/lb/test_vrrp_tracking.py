"""What VRRP tracking asks the balancer: can it serve? No while a frontend's backend has no
usable server or a frontend is not listening (then its VRRP instances step down)."""

from __future__ import annotations

from tests.lb.conftest import Backend, StartLb


async def test_cannot_serve_names_the_reason(start_lb: StartLb) -> None:
    backend = await Backend("web1").start()
    try:
        lb = await start_lb(
            bind="127.0.0.1:0", backend=[f"web1={backend.address}"], check_path="/healthz"
        )
        assert lb.cannot_serve() is None

        lb.balancer.backends["default"].servers[0].state = "maint"
        assert lb.cannot_serve() == "no usable server in backend default"
        lb.balancer.backends["default"].servers[0].state = "ready"
        assert lb.cannot_serve() is None

        backend.kill()  # the health checks see it go (fall 3 x inter)
        server = lb.balancer.backends["default"].servers[0]
        server.set_health(False, "connection refused")
        assert lb.cannot_serve() == "no usable server in backend default"
        server.set_health(True, "ok")

        listener = lb.balancer.listeners["default"]
        assert listener.server is not None
        await listener.server.shutdown(0)
        assert lb.cannot_serve() == "frontend default is not listening"
    finally:
        await backend.stop()
