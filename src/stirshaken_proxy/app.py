"""Wiring: the engine, its sockets, one timer, the admin server, signals and graceful drain."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from typing import Any

from .config import Config
from .engine.proxy import CARRIER, DIALER, ProxyEngine, RequestHook
from .io.admin import AdminServer
from .io.transports import TcpConnection, TcpManager, UdpEndpoint
from .sip.transport import Peer, Send

log = logging.getLogger(__name__)


class Application:
    """Runs one ProxyEngine on real sockets. All engine calls happen on the event loop thread."""

    def __init__(self, config: Config, *, request_hook: RequestHook | None = None) -> None:
        self.config = config
        self.engine = ProxyEngine(config.engine, request_hook=request_hook)
        self.counters: dict[str, int] = {}
        self.udp: dict[str, UdpEndpoint] = {}
        self.tcp: dict[str, TcpManager] = {}
        self.admin: AdminServer | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._ready = False
        self.readiness_checks: dict[str, Any] = {}

    # -- start and stop -------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ec = self.config.engine
        tc = self.config.transport
        for side_cfg in (ec.dialer, ec.carrier):
            side = side_cfg.name
            _, proto = await loop.create_datagram_endpoint(
                lambda side=side: UdpEndpoint(side, self.feed, self.counters),  # type: ignore[misc]
                local_addr=(side_cfg.host, side_cfg.port))
            self.udp[side] = proto
            if tc.tcp:
                manager = TcpManager(
                    side, self.feed, self.counters, max_message_size=ec.max_message_size,
                    max_connections=tc.max_tcp_connections,
                    max_pending_bytes=tc.max_tcp_pending_bytes,
                    connect_timeout=tc.tcp_connect_timeout, local_host=side_cfg.host)
                manager.server = await loop.create_server(
                    lambda m=manager: TcpConnection(m, m.side),  # type: ignore[misc]
                    side_cfg.host, side_cfg.port, reuse_address=True)
                self.tcp[side] = manager
        if self.config.admin.enabled:
            self.admin = AdminServer(self.config.admin.host, self.config.admin.port,
                                     readiness=self.readiness)
            await self.admin.start()
        self._housekeeping = loop.create_task(self._housekeep())
        # Transactions live for 32 s (Timers J, L, M): with the default thresholds the cyclic
        # GC walks tens of thousands of them again and again, which cost more than half of
        # the per-INVITE time in bench/inprocess.py. Collect young objects less often and
        # keep what start-up built out of the collector's way.
        gc.set_threshold(tc.gc_threshold, 20, 100)
        gc.freeze()
        self._ready = True
        log.info("listening: dialer %s:%d, carrier %s:%d (udp%s)", ec.dialer.host, ec.dialer.port,
                 ec.carrier.host, ec.carrier.port, "+tcp" if tc.tcp else "")

    def readiness(self) -> dict[str, bool]:
        checks = {"listeners": self._ready and len(self.udp) == 2}
        for name, check in self.readiness_checks.items():
            checks[name] = bool(check())
        return checks

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT, then drain and stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        self._ready = False
        self.engine.draining = True
        deadline = time.monotonic() + self.config.transport.shutdown_grace
        while self.engine.transactions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.engine.transactions:
            log.info("stopping with %d transactions still open", self.engine.transactions)
        self.engine.shutdown()
        if self._timer is not None:
            self._timer.cancel()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            await asyncio.gather(self._housekeeping, return_exceptions=True)
        for manager in self.tcp.values():
            await manager.close()
        for endpoint in self.udp.values():
            if endpoint.transport is not None:
                endpoint.transport.close()
        if self.admin is not None:
            await self.admin.stop()
        log.info("stopped")

    async def _housekeep(self) -> None:
        idle = self.config.transport.tcp_idle_timeout
        while True:
            await asyncio.sleep(min(idle, 10.0))
            now = asyncio.get_running_loop().time()
            for manager in self.tcp.values():
                manager.close_idle(now, idle)

    # -- the engine's glue ----------------------------------------------------------------
    def feed(self, data: bytes, peer: Peer) -> None:
        try:
            actions = self.engine.receive(data, peer, time.time())
        except Exception:
            self.counters["internal_errors"] = self.counters.get("internal_errors", 0) + 1
            log.exception("internal error on a message from %s:%d", peer.host, peer.port)
            return
        self._execute(actions)
        self._arm_timer()

    def _execute(self, actions: list[Send]) -> None:
        for data, peer in actions:
            if peer.transport == "udp":
                self.udp[peer.side].send(data, peer.host, peer.port)
            else:
                manager = self.tcp.get(peer.side)
                if manager is not None:
                    manager.send(data, peer.host, peer.port)

    def _arm_timer(self) -> None:
        deadline = self.engine.next_deadline()
        if deadline is None or (self._timer_at is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = deadline
        self._timer = loop.call_at(loop.time() + max(0.0, deadline - time.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            actions = self.engine.on_timers(time.time())
        except Exception:
            self.counters["internal_errors"] = self.counters.get("internal_errors", 0) + 1
            log.exception("internal error in timers")
            actions = []
        self._execute(actions)
        self._arm_timer()


def run_app(config: Config, *, request_hook: RequestHook | None = None) -> None:
    """Run the service in the foreground (uvloop when it is installed)."""
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop

    async def main() -> None:
        app = Application(config, request_hook=request_hook)
        await app.run()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


__all__ = ["CARRIER", "DIALER", "Application", "run_app"]
