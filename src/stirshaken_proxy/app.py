"""Wiring: the engine, its sockets, one timer, the admin server, signals and graceful drain."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import math
import os
import signal
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiohttp import web
from cryptography import x509

from .config import Config, ConfigError, VerifyConfig, load_config
from .engine.inbound import InboundVerifier
from .engine.outbound import OutboundAuthenticator
from .engine.proxy import CARRIER, DIALER, EngineConfig, ProxyEngine, RequestHook
from .engine.sources import SourceFilter
from .engine.stats import LatencyHistogram
from .io.admin import AdminServer
from .io.fetcher import Fetcher
from .io.logs import tag_worker
from .io.metrics import exposition, make_registry, merge, snapshot
from .io.transports import TcpConnection, TcpManager, UdpEndpoint
from .io.workers import (
    HEALTH,
    MESSAGE,
    READY,
    SEND,
    STATS,
    STATS_REPLY,
    WorkerLink,
    decode_peer,
    die_with_parent,
)
from .policy import regions
from .policy.accounts import AccountDirectory
from .policy.health import NumberHealth
from .sip.message import call_id_of
from .sip.transport import Action, Fetch, Peer, Send
from .stir.credentials import CredentialCache, TrustStore
from .stir.passport import Signer, SigningIdentity
from .stir.verify import Verifier
from .store.sqlite import HealthRows, NumberStore

log = logging.getLogger(__name__)
_GC_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


class Application:
    """Runs one ProxyEngine on real sockets. All engine calls happen on the event loop thread.

    With several workers (``worker`` given) this is one of them: it shares the listening ports,
    hands each message to the worker that owns its call, and keeps a replica of number health.
    Worker 0 also serves the admin API and supervises the others (``children``)."""

    def __init__(self, config: Config, *, request_hooks: tuple[RequestHook, ...] = (),
                 worker: WorkerLink | None = None, children: tuple[int, ...] = ()) -> None:
        self.config = config
        self.worker = worker
        self.worker_index = worker.index if worker is not None else 0
        self.children = list(children)
        self.exit_code = 0
        self.engine = ProxyEngine(self._engine_config(config), request_hooks=request_hooks)
        self._peer_snapshots: list[dict[str, Any]] = []
        self._snapshot_waiters: dict[int, tuple[asyncio.Future[None], list[dict[str, Any]]]] = {}
        self._snapshot_request = 0
        self._tcp_home: dict[tuple[str, str, int], int] = {}  # TCP peer -> worker holding it
        self._stopped = False
        self._workers_ready: set[int] = set()
        self._retiring: set[asyncio.Task[None]] = set()  # fetchers replaced by a reload
        self.gc_pauses = [LatencyHistogram(_GC_BUCKETS) for _ in range(3)]  # by generation
        self._gc_started = 0.0
        self.counters: Counter[str] = Counter()  # I/O events (the engine keeps its own)
        self.udp: dict[str, UdpEndpoint] = {}
        self.tcp: dict[str, TcpManager] = {}
        self.admin: AdminServer | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._ready = False
        self.readiness_checks: dict[str, Any] = {}
        self.auth: OutboundAuthenticator | None = None
        self.store: NumberStore | None = None
        self._store_ok = False
        self._refresh: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.health: NumberHealth | None = None
        self.health_rows: HealthRows | None = None
        self.fetcher: Fetcher | None = None
        self.inbound: InboundVerifier | None = None
        self.certificate_expiry: dict[str, float] = {}  # signing identity -> notAfter
        self._reloading: asyncio.Task[None] | None = None
        self.registry = make_registry(self)

    # -- start and stop -------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await self._resolve_next_hops()
        if self.config.auth is not None:
            await self._start_auth()
        if self.config.verify is not None:
            self._start_verify()
        ec = self.config.engine
        tc = self.config.transport
        shared = self.worker is not None  # every worker binds the same ports
        for side_cfg in (ec.dialer, ec.carrier):
            side = side_cfg.name
            _, proto = await loop.create_datagram_endpoint(
                lambda side=side: UdpEndpoint(side, self.feed, self.counters),  # type: ignore[misc]
                local_addr=(side_cfg.host, side_cfg.port), reuse_port=shared)
            self.udp[side] = proto
            if tc.tcp:
                manager = TcpManager(
                    side, self.feed, self.counters, max_message_size=ec.max_message_size,
                    max_connections=tc.max_tcp_connections,
                    max_pending_bytes=tc.max_tcp_pending_bytes,
                    connect_timeout=tc.tcp_connect_timeout, local_host=side_cfg.host)
                manager.server = await loop.create_server(
                    lambda m=manager: TcpConnection(m, m.side),  # type: ignore[misc]
                    side_cfg.host, side_cfg.port, reuse_address=True, reuse_port=shared)
                self.tcp[side] = manager
        if self.worker is not None:
            self.worker.start(self._on_link)
        if self.config.admin.enabled and self.worker_index == 0:
            self.admin = AdminServer(self.config.admin.host, self.config.admin.port,
                                     readiness=self.readiness)
            self._add_certificate_routes(self.admin)
            self.admin.add_route("/metrics", self._metrics)
            self.admin.add_route("/numbers/health", self._health_report)
            self.admin.app.router.add_post("/numbers/{tn}/quarantine", self._quarantine)
            self.admin.app.router.add_post("/numbers/{tn}/release", self._release)
            await self.admin.start()
        self._housekeeping = loop.create_task(self._housekeep())
        # Transactions live for 32 s (Timers J, L, M): with the default thresholds the cyclic
        # GC walks tens of thousands of them again and again, which cost more than half of
        # the per-INVITE time in bench/inprocess.py. Collect young objects less often and
        # keep what start-up built out of the collector's way.
        gc.set_threshold(tc.gc_threshold, 20, 100)
        gc.freeze()
        gc.callbacks.append(self._gc_pause)
        self._ready = True
        if self.worker is not None and self.worker_index != 0:
            self.worker.event(READY, self.worker_index, to=0)
        log.info("listening: dialer %s:%d, carrier %s:%d (udp%s)%s", ec.dialer.host,
                 ec.dialer.port, ec.carrier.host, ec.carrier.port, "+tcp" if tc.tcp else "",
                 f", worker {self.worker_index} of {self.worker.count}"
                 if self.worker is not None else "")

    def _gc_pause(self, phase: str, info: dict[str, int]) -> None:
        """Time each collection: a pause holds every message waiting (the p99 of the time
        added to an INVITE)."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self.gc_pauses[info["generation"]].observe(time.perf_counter() - self._gc_started)
            self._gc_started = 0.0

    def _engine_config(self, config: Config) -> EngineConfig:
        """The engine's limits are the service's: with several workers each gets its share
        (calls spread evenly over workers by Call-ID)."""
        ec = config.engine
        if self.worker is None:
            return ec
        n = self.worker.count
        flood = replace(ec.flood, requests_per_second=ec.flood.requests_per_second / n,
                        burst=max(1.0, ec.flood.burst / n))
        return replace(ec, max_transactions=max(1, ec.max_transactions // n),
                       max_parked=max(1, ec.max_parked // n), flood=flood)

    async def _resolve_next_hops(self) -> None:
        """Next hops may be host names: resolve them once, at start (never per message)."""
        ec = self.config.engine
        sides = {}
        for side in (ec.dialer, ec.carrier):
            try:
                ipaddress.ip_address(side.next_hop_host)
                sides[side.name] = side
                continue
            except ValueError:
                pass
            infos = await asyncio.get_running_loop().getaddrinfo(
                side.next_hop_host, side.next_hop_port, type=socket.SOCK_DGRAM)
            if not infos:
                raise ConfigError(f"[{side.name}] next_hop {side.next_hop_host} does not resolve")
            sides[side.name] = replace(side, next_hop_host=str(infos[0][4][0]))
        if sides[DIALER] is not ec.dialer or sides[CARRIER] is not ec.carrier:
            engine_config = replace(ec, dialer=sides[DIALER], carrier=sides[CARRIER])
            self.config = replace(self.config, engine=engine_config)
            self.engine = ProxyEngine(self._engine_config(self.config), request_hooks=tuple(
                self.engine.request_hooks))

    def readiness(self) -> dict[str, bool]:
        checks = {"listeners": self._ready and len(self.udp) == 2}
        if self.worker is not None:  # worker 0: every other worker started and is alive
            others = self.worker.count - 1
            checks["workers"] = len(self.children) == others == len(self._workers_ready)
        for name, check in self.readiness_checks.items():
            checks[name] = bool(check())
        return checks

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT, then drain and stop. SIGHUP reloads the configuration."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._schedule_reload)
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.stop()

    def _reap(self) -> None:
        """A worker exited: unless we are stopping, the service stops (exit status 1) so
        whatever supervises it restarts the whole set."""
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            self.children.remove(pid)
            if not self._stop.is_set():
                log.error("worker process %d exited (status %d); stopping the service", pid,
                          os.waitstatus_to_exitcode(status))
                self.exit_code = 1
                self.request_stop()

    def _signal_children(self, sig: int) -> None:
        for pid in self.children:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _schedule_reload(self) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> None:
        """Re-read the configuration file and apply it without dropping calls: accounts,
        signing identities, the inventory, verification policy and trust, limits and timers
        take effect for new requests; transactions in flight carry on. Listener addresses
        and next hops need a restart (logged)."""
        try:
            new = await asyncio.to_thread(load_config, self.config.path)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return
        old = self.config
        ec, nec = old.engine, new.engine
        for side, nside in ((ec.dialer, nec.dialer), (ec.carrier, nec.carrier)):
            if (side.host, side.port, side.next_hop_host, side.next_hop_port,
                    side.next_hop_transport) != (nside.host, nside.port, nside.next_hop_host,
                                                 nside.next_hop_port, nside.next_hop_transport):
                log.warning("[%s] listen/next_hop changes need a restart; kept as running",
                            side.name)
        self.config = new
        self.engine.config = replace(self._engine_config(new), dialer=ec.dialer,
                                     carrier=ec.carrier)
        self.engine.set_source_filter(CARRIER, SourceFilter(
            nec.carrier.allowed_sources, allow_any=nec.carrier.allow_any_source))
        self.engine.set_source_filter(DIALER, SourceFilter(
            nec.dialer.allowed_sources, allow_any=nec.dialer.allow_any_source))
        for task in (self._refresh, self._flusher):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.flush_health()
        # The new signer and verifier replace the running ones in one step (no await in
        # between), so no request is ever handled by neither; calls in progress carry on.
        self.readiness_checks.clear()
        if new.auth is not None:
            await self._start_auth()
        elif self.auth is not None:
            self._swap(self.auth, None)
            self._swap_call_tracking(self.auth, None)
            self.auth = self.health = self.health_rows = None
            if self.store is not None:
                self.store.close()
                self.store = None
            self.certificate_expiry.clear()
        if new.verify is not None:
            self._start_verify()
        elif self.inbound is not None:
            self._swap(self.inbound, None)
            self.inbound = None
            self._retire_fetcher()
        logging.getLogger().setLevel(new.log.level.upper())
        log.info("configuration reloaded from %s", new.path)
        self._signal_children(signal.SIGHUP)

    async def stop(self) -> None:
        self._ready = False
        self._signal_children(signal.SIGTERM)
        self.engine.draining = True
        deadline = time.monotonic() + self.config.transport.shutdown_grace
        while self.engine.pending_requests and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.engine.pending_requests:
            log.info("stopping with %d requests still unanswered", self.engine.pending_requests)
        self.engine.shutdown()
        if self._timer is not None:
            self._timer.cancel()
        for task in (self._housekeeping, self._refresh, self._flusher, *self._retiring):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.worker is not None:
            await self._stop_workers(deadline + 5.0)
        await self.flush_health()
        if self.store is not None:
            self.store.close()
        if self.fetcher is not None:
            await self.fetcher.close()
        for manager in self.tcp.values():
            await manager.close()
        for endpoint in self.udp.values():
            if endpoint.transport is not None:
                endpoint.transport.close()
        if self.admin is not None:
            await self.admin.stop()
        if self._gc_pause in gc.callbacks:
            gc.callbacks.remove(self._gc_pause)
        log.info("stopped")

    # -- the authentication service ---------------------------------------------------------
    async def _start_auth(self) -> None:
        """Start signing, or (a reload) replace the running signer."""
        ac = self.config.auth
        assert ac is not None
        # What needs waiting for comes first ...
        store = await asyncio.to_thread(NumberStore, ac.store_path)
        inventory = await asyncio.to_thread(store.load, ac.numbers)
        if any(a.local_presence != "off" for a in ac.accounts):
            await asyncio.to_thread(regions.preload)
        rows = HealthRows(store)
        restored = (await asyncio.to_thread(rows.load)
                    if ac.health is not None and self.health is None else {})
        # ... then the swap, with no await: the event loop sees the old signer or the new.
        self._store_ok = True
        directory = AccountDirectory(list(ac.accounts))
        signers = {s.name: Signer(SigningIdentity(name=s.name, key=s.key, x5u=s.x5u))
                   for s in ac.signing}
        auth = OutboundAuthenticator(directory=directory, signers=signers,
                                     inventory=inventory, policy=ac.policy,
                                     stats=self.engine.stats, clock=time.perf_counter)
        self.certificate_expiry.clear()
        for s in ac.signing:
            if s.certificate is not None:
                cert = x509.load_pem_x509_certificate(s.certificate.read_bytes())
                self.certificate_expiry[s.name] = cert.not_valid_after_utc.timestamp()
        if ac.health is None:
            self.health = self.health_rows = None
        else:
            health = self.health
            if health is None:
                health = NumberHealth(ac.health)
                for tn, data in restored.items():
                    health.restore(tn, data)
                health.dirty.clear()
                if self.worker is not None:
                    health.publish = self._publish_health
            else:  # a reload: the statistics carry on under the new limits
                health.limits = ac.health
            self.health, self.health_rows = health, rows
            auth.health = health
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_health_every(ac.health_flush_interval))
        old, old_store = self.auth, self.store
        if old is not None:
            auth.carry_over(old)
        self._swap(old, auth)
        self._swap_call_tracking(old, auth)
        self.auth, self.store = auth, store
        if old_store is not None:
            old_store.close()
        # Traffic from an account's sources is admitted on the dialer side.
        dialer = self.config.engine.dialer
        self.engine.set_source_filter(DIALER, SourceFilter(
            dialer.allowed_sources + directory.all_sources(), allow_any=dialer.allow_any_source))
        self.readiness_checks["keys"] = lambda: bool(signers)
        self.readiness_checks["store"] = lambda: self._store_ok
        self._refresh = asyncio.get_running_loop().create_task(self._refresh_inventory())
        log.info("signing for %d accounts, inventory of %d blocks (version %d)",
                 len(ac.accounts), len(inventory), inventory.version)

    async def _flush_health_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.flush_health()

    async def flush_health(self) -> None:
        """Write the numbers whose statistics changed (a kill -9 loses at most one interval)."""
        if self.health is None or self.health_rows is None:
            return
        if self.worker_index != 0:  # worker 0 holds the same replica and writes it
            self.health.dirty.clear()
            return
        rows = self.health.take_dirty()
        if rows:
            try:
                await asyncio.to_thread(self.health_rows.save, rows, time.time())
            except Exception as exc:  # noqa: BLE001 - keep them for the next flush
                log.warning("number health not saved (retrying): %s", exc)
                self.health.dirty.update(tn for tn, _ in rows)

    def _start_verify(self) -> None:
        vc = self.config.verify
        assert vc is not None
        verifier, fetcher = build_verification(vc, on_done=self._credential_ready,
                                               counters=self.counters)
        inbound = InboundVerifier(verifier=verifier, policy=vc.policy,
                                  stats=self.engine.stats, clock=time.perf_counter)
        old = self.inbound
        if old is not None:
            inbound.carry_over(old)
            self._retire_fetcher()
        self._swap(old, inbound)
        self.inbound, self.fetcher = inbound, fetcher
        self.readiness_checks["trust_anchors"] = lambda: bool(vc.anchors)
        log.info("verifying inbound calls against %d trust anchors", len(vc.anchors))

    def _swap(self, old: RequestHook | None, new: RequestHook | None) -> None:
        """Put ``new`` where ``old`` was among the engine's request hooks (in its place)."""
        hooks = self.engine.request_hooks
        if old in hooks:
            if new is None:
                hooks.remove(old)
            else:
                hooks[hooks.index(old)] = new
        elif new is not None:
            hooks.append(new)

    def _swap_call_tracking(self, old: OutboundAuthenticator | None,
                            new: OutboundAuthenticator | None) -> None:
        """The signer also follows calls (number health, caller-ID mapping) when number
        health is on: hand that over too."""
        observers, filters = self.engine.call_observers, self.engine.forward_filters
        if old is not None and old in observers:
            observers.remove(old)
            filters.remove(old.map_identities)
        if new is not None and new.health is not None:
            observers.append(new)
            filters.append(new.map_identities)

    def _retire_fetcher(self) -> None:
        """Close the running fetcher once its fetches in flight had their time (they still
        resume the requests waiting on them)."""
        fetcher, self.fetcher = self.fetcher, None
        if fetcher is None:
            return
        timeout = self.config.verify.fetch.timeout if self.config.verify is not None else 5.0
        task = asyncio.get_running_loop().create_task(self._close_later(fetcher, timeout + 1))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _close_later(fetcher: Fetcher, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:  # at once when the service stops first
            await fetcher.close()

    def _credential_ready(self, url: str) -> None:
        self._execute(self.engine.credential_ready(url, time.time()))
        self._arm_timer()

    async def _refresh_inventory(self) -> None:
        """Reload the inventory when the store's version changes (no query per call)."""
        ac = self.config.auth
        assert ac is not None and self.store is not None and self.auth is not None
        store, auth = self.store, self.auth
        while True:
            await asyncio.sleep(ac.refresh_interval)
            try:
                version = await asyncio.to_thread(store.version)
                if version != auth.inventory.version:
                    auth.inventory = await asyncio.to_thread(store.load, ac.numbers)
                    log.info("inventory reloaded: %d blocks (version %d)",
                             len(auth.inventory), version)
                self._store_ok = True
            except Exception as exc:  # noqa: BLE001 - keep serving from memory
                if self._store_ok:
                    log.warning("number store unreachable, serving the last inventory: %s", exc)
                self._store_ok = False

    async def _health_report(self, request: web.Request) -> web.Response:
        if self.health is None:
            return web.json_response({"error": "number health is off"}, status=404)
        now = time.time()
        return web.json_response([self.health.report(tn, now)
                                  for tn in sorted(self.health.numbers)])

    async def _quarantine(self, request: web.Request) -> web.Response:
        if self.health is None:
            return web.json_response({"error": "number health is off"}, status=404)
        tn = request.match_info["tn"]
        try:
            hours = float(request.query.get("hours", "24"))
        except ValueError:
            return web.json_response({"error": "hours must be a number"}, status=400)
        reason = request.query.get("reason", "flagged by operator")[:200]
        self.health.quarantine(tn, reason, time.time(), hours * 3600)
        log.info("number %s quarantined by the operator for %.1f h: %s", tn, hours, reason)
        return web.json_response(self.health.report(tn, time.time()))

    async def _release(self, request: web.Request) -> web.Response:
        if self.health is None:
            return web.json_response({"error": "number health is off"}, status=404)
        self.health.release(request.match_info["tn"])
        return web.json_response(self.health.report(request.match_info["tn"], time.time()))

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.worker is not None:
            await self._gather_snapshots()
        return web.Response(body=exposition(self.registry),
                            content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    def _add_certificate_routes(self, admin: AdminServer) -> None:
        """The development certificate repository: each chain at its serve_path."""
        if self.config.auth is None:
            return
        for signing in self.config.auth.signing:
            if not signing.serve_path or signing.chain is None:
                continue
            body = signing.chain.read_bytes()

            async def serve(request: web.Request, body: bytes = body) -> web.Response:
                return web.Response(body=body, content_type="application/pem-certificate-chain",
                                    headers={"Cache-Control": "max-age=86400"})

            admin.add_route(signing.serve_path, serve)

    async def _housekeep(self) -> None:
        idle = self.config.transport.tcp_idle_timeout
        interval = min(idle, 10.0)
        if self.children:
            interval = min(interval, 0.5)  # also how soon a dead worker is noticed
        while True:
            await asyncio.sleep(interval)
            self._reap()
            now = asyncio.get_running_loop().time()
            for manager in self.tcp.values():
                manager.close_idle(now, idle)

    # -- workers ---------------------------------------------------------------------------
    def metrics_snapshot(self) -> dict[str, Any]:
        """This worker's counters plus the others' (fetched by the /metrics handler)."""
        return merge([snapshot(self), *self._peer_snapshots])

    async def _gather_snapshots(self, timeout: float = 1.0) -> None:
        worker = self.worker
        assert worker is not None
        self._snapshot_request += 1
        request = self._snapshot_request
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        got: list[dict[str, Any]] = []
        self._snapshot_waiters[request] = (done, got)
        worker.event(STATS, request)
        try:
            async with asyncio.timeout(timeout):
                await done
        except TimeoutError:
            self.counters["worker_stats_timeouts"] += 1
            log.warning("metrics: %d of %d workers answered", len(got) + 1, worker.count)
        finally:
            del self._snapshot_waiters[request]
        self._peer_snapshots = got

    def _publish_health(self, method: str, args: tuple[Any, ...]) -> None:
        assert self.worker is not None
        self.worker.event(HEALTH, (method, args))

    def _on_link(self, kind: bytes, origin: int, datagram: bytes) -> None:
        """What another worker sent."""
        worker = self.worker
        assert worker is not None
        if self._stopped and kind != HEALTH:
            return
        if kind == MESSAGE:
            peer, data = decode_peer(datagram)
            if peer.transport == "tcp":
                home = self._tcp_home
                home[(peer.side, peer.host, peer.port)] = origin
                if len(home) > 4 * self.config.transport.max_tcp_connections:
                    del home[next(iter(home))]
            self._process(data, peer)
        elif kind == SEND:
            peer, data = decode_peer(datagram)
            manager = self.tcp.get(peer.side)
            conn = manager.connections.get((peer.host, peer.port)) if manager else None
            if conn is None or not conn.write(data):
                self.counters["tcp_send_failures"] += 1
        elif kind == HEALTH:
            if self.health is not None:
                method, args = worker.value(datagram)
                self.health.apply(method, args)
        elif kind == STATS:
            worker.event(STATS_REPLY, (worker.value(datagram), snapshot(self)), to=origin)
        elif kind == READY:
            self._workers_ready.add(origin)
        elif kind == STATS_REPLY:
            request, snap = worker.value(datagram)
            waiter = self._snapshot_waiters.get(request)
            if waiter is not None:
                waiter[1].append(snap)
                if len(waiter[1]) == worker.count - 1 and not waiter[0].done():
                    waiter[0].set_result(None)

    async def _stop_workers(self, deadline: float) -> None:
        """Worker 0 waits for the others to drain, then applies their last events."""
        worker = self.worker
        assert worker is not None
        while self.children and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            self._reap()
        for pid in self.children:
            log.warning("worker process %d did not stop in time; killing it", pid)
            os.kill(pid, signal.SIGKILL)
        self._stopped = True
        worker.drain()  # the others' last number-health events
        worker.flush()
        worker.close()

    # -- the engine's glue ----------------------------------------------------------------
    def feed(self, data: bytes, peer: Peer) -> None:
        worker = self.worker
        if worker is not None:
            owner = worker.owner(call_id_of(data))
            if owner != worker.index:
                worker.message(owner, peer, data)
                self.counters["worker_handoffs"] += 1
                return
        self._process(data, peer)

    def _process(self, data: bytes, peer: Peer) -> None:
        try:
            actions = self.engine.receive(data, peer, time.time())
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("internal error on a message from %s:%d", peer.host, peer.port)
            return
        self._execute(actions)
        self._arm_timer()

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if type(action) is Send:
                data, peer = action
                if peer.transport == "udp":
                    self.udp[peer.side].send(data, peer.host, peer.port)
                else:
                    manager = self.tcp.get(peer.side)
                    if manager is None:
                        continue
                    home = self._tcp_home.get((peer.side, peer.host, peer.port))
                    if (home is not None and self.worker is not None
                            and (peer.host, peer.port) not in manager.connections):
                        self.worker.tcp_send(home, peer, data)  # its connection is there
                    else:
                        manager.send(data, peer.host, peer.port)
            elif type(action) is Fetch and self.fetcher is not None:
                self.fetcher.request(action.url)

    def _arm_timer(self, exact: bool = False) -> None:
        # After each message, the heap's first entry is enough: it may be a cancelled timer
        # (never later than the real next one), which costs at most an early wake-up that
        # finds nothing due; after the timers ran, the exact next deadline.
        deadline = self.engine.next_deadline() if exact else self.engine.timers.earliest()
        if deadline is None:
            return
        # One wake-up serves every timer due within timer_resolution (RFC 3261 timers are
        # hundreds of milliseconds and up): far fewer loop callbacks under load.
        resolution = self.config.transport.timer_resolution
        deadline = math.ceil(deadline / resolution) * resolution
        if self._timer_at is not None and self._timer_at <= deadline:
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
            self.counters["internal_errors"] += 1
            log.exception("internal error in timers")
            actions = []
        self._execute(actions)
        self._arm_timer(exact=True)


def build_verification(vc: VerifyConfig, *, on_done: Callable[[str], None],
                       counters: Counter[str]) -> tuple[Verifier, Fetcher]:
    """The verifier and the fetcher that fills its credential cache (service and CLI)."""
    cache = CredentialCache(max_entries=vc.cache_entries)
    trust = TrustStore(list(vc.anchors), list(vc.crls))
    verifier = Verifier(cache=cache, url_policy=vc.url_policy, window=vc.freshness,
                        country_code=vc.policy.country_code)
    ssl_context = ssl.create_default_context()
    if vc.tls_ca_file is not None:
        ssl_context.load_verify_locations(cafile=str(vc.tls_ca_file))
    fetcher = Fetcher(policy=vc.url_policy, crl_policy=vc.crl_policy, cache=cache, trust=trust,
                      config=vc.fetch, ssl_context=ssl_context, on_done=on_done,
                      counters=counters)
    return verifier, fetcher


def run_app(config: Config) -> int:
    """Run the service in the foreground (uvloop when it is installed) until it is stopped;
    returns the exit status. With ``[transport] workers`` above 1 this process is worker 0
    and forks the others before any event loop or thread exists."""
    count = config.transport.workers
    if count <= 1:
        return _run_worker(config, None, ())
    links = WorkerLink.mesh(count)
    parent = os.getpid()
    children: list[int] = []
    for index in range(1, count):
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                die_with_parent(parent)
                tag_worker(index)
                for other in links:
                    if other is not links[index]:
                        other.close()
                status = _run_worker(config, links[index], ())
            except BaseException:  # a worker reports and exits, it never unwinds into the parent
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(status)
        children.append(pid)
    for link in links[1:]:
        link.close()
    tag_worker(0)
    return _run_worker(config, links[0], tuple(children))


def _run_worker(config: Config, worker: WorkerLink | None, children: tuple[int, ...]) -> int:
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop

    async def main() -> int:
        app = Application(config, worker=worker, children=children)
        await app.run()
        return app.exit_code

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


__all__ = ["CARRIER", "DIALER", "Application", "run_app"]
