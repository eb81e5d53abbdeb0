"""Wiring: build the services bundle from the configuration, start the shells, reload, drain.

The pieces each own one concern: ``io.shell`` the loop glue around the engine, ``io.dispatch``
what workers tell each other, ``io.supervisor`` the worker processes, ``io.admin`` the admin
HTTP handlers, ``store.sync`` the inventory and number-health write-behind, ``io.gcwatch``
the garbage collector. What the service decides is in ``engine`` and the STI core below it.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import re
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from . import FROM_SOURCE, engine_core
from .config import Config, ConfigError, VerifyConfig, load_config
from .engine.proxy import EngineConfig, ProxyEngine
from .engine.redirect import RedirectEngine
from .engine.services import Services
from .engine.sources import SourceFilter
from .io.admin import AdminServer, CertificateRepository, HealthApi
from .io.dispatch import WorkerDispatch
from .io.fetcher import CredentialFeed, Fetcher, tls_context
from .io.gcwatch import GcWatch
from .io.metrics import exposition, make_registry, merge, snapshot
from .io.records import Journal, RecordWriter
from .io.renewal import Renewer
from .io.rest import RestApi
from .io.shared_health import SharedHealth
from .io.shell import EngineShell
from .io.supervisor import Children, run_workers
from .io.transports import SideTls
from .io.trust_center import AdminAuth, AdminCredential, PageData, TrustCenter
from .io.webhooks import WebhookSender
from .io.workers import WorkerLink
from .policy.accounts import AccountDirectory, LocalPresence
from .policy.digest import DigestAuth
from .policy.health import HealthEvent, HealthLimits, NumberHealth
from .policy.regions import Regions
from .sip.message import core_in_use, use_core
from .sip.transport import Side, Transport
from .stats import Stats
from .stir.credentials import TrustStore
from .stir.passport import Signer, SigningIdentity
from .stir.rcd import Brand
from .stir.signing import Authenticator
from .stir.verification import (
    VerificationService,
    VerifyPolicy,
)
from .stir.verify import Checks
from .store import open_store
from .store.base import Store
from .store.sync import HealthWriter, InventorySync, Watch

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Parts:
    """What one configuration runs with besides the bundle: replaced together on reload."""

    services: Services
    store: Store | None = None
    listener: Any = None  # PostgreSQL: the inventory change notifications
    inventory: InventorySync | None = None
    writer: HealthWriter | None = None
    feed: CredentialFeed | None = None  # the verification service and its fetcher
    health: NumberHealth | None = None  # the number-health replica in use
    digest: DigestAuth | None = None  # the digest checker in use (kept across reloads)
    expiry: dict[str, float] = field(default_factory=dict)  # signing identity -> notAfter
    served: dict[str, tuple[bytes, float]] = field(default_factory=dict)  # x5u repository
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def run(self) -> None:
        """Start the store sync tasks (owned here, cancelled by ``stop``)."""
        loop = asyncio.get_running_loop()
        for task in (self.inventory, self.writer, self.listener):
            if task is not None:
                self.tasks.append(loop.create_task(task.run()))

    async def stop(self, *, close_fetcher: bool = True) -> None:
        """Stop the sync tasks and write number health one last time."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        if self.writer is not None:
            await self.writer.flush()
        if close_fetcher and self.feed is not None and self.feed.fetcher is not None:
            await self.feed.fetcher.close()

    def retire(self, grace: float) -> asyncio.Task[None] | None:
        """Close what a reload replaced; the fetcher once its fetches in flight had ``grace``
        seconds (they still resume the requests waiting on them): that task is returned."""
        if self.store is not None:
            self.store.close()
        if self.feed is None or self.feed.fetcher is None:
            return None
        return asyncio.get_running_loop().create_task(_close_later(self.feed.fetcher, grace))


def engine_config(config: Config, workers: int) -> EngineConfig:
    """The engine's limits are the service's: with several workers each gets its share
    (calls spread evenly over workers by Call-ID)."""
    ec = config.engine
    if workers <= 1:
        return ec
    flood = replace(ec.flood, requests_per_second=ec.flood.requests_per_second / workers,
                    burst=max(1.0, ec.flood.burst / workers))
    return replace(ec, max_transactions=max(1, ec.max_transactions // workers),
                   max_parked=max(1, ec.max_parked // workers), flood=flood)


def build_verification(vc: VerifyConfig, *, stats: Stats, counters: Counter[str],
                       clock: Callable[[], float] | None = None) -> CredentialFeed:
    """The verification service, the fetcher that brings it bytes and the feed between
    them (the service and the CLI)."""
    service = VerificationService(
        checks=Checks(url_policy=vc.url_policy, window=vc.freshness,
                      country_code=vc.policy.country_code),
        trust=TrustStore(list(vc.anchors), list(vc.crls)), cache_policy=vc.cache,
        cache_entries=vc.cache_entries, stats=stats, clock=clock)
    ssl_context = tls_context(vc.tls_ca_file)
    feed = CredentialFeed(service)
    feed.fetcher = Fetcher(policy=vc.url_policy, crl_policy=vc.crl_policy, limits=vc.fetch,
                           ssl_context=ssl_context, on_done=feed.on_done, counters=counters)
    return feed


async def build_parts(config: Config, *, health: NumberHealth | None, regions: Regions,
                      stats: Stats, counters: Counter[str], writer: bool,
                      digest: DigestAuth | None = None) -> Parts:
    """Everything a configuration runs with, waited for before anything is swapped in.
    ``health`` is the running replica (a reload keeps its statistics); ``writer``: this
    worker writes number health to the store; ``digest``: the running digest checker (a
    reload keeps its nonce counts and failure counts)."""
    ec = config.engine
    dialer_sources = ec.dialer.allowed_sources
    accounts = AccountDirectory([])
    authenticator: Authenticator | None = None
    verification: VerificationService | None = None
    parts = Parts(services=Services(dialer_sources=SourceFilter(()),
                                    carrier_sources=SourceFilter(())))
    ac = config.auth
    if ac is not None:
        parts.store = store = await asyncio.to_thread(
            open_store, path=ac.store_path, url=ac.store_url, instance=ac.store_instance)
        inventory = await asyncio.to_thread(store.load, ac.numbers)
        if any(a.local_presence is not LocalPresence.OFF for a in ac.accounts):
            await asyncio.to_thread(regions.preload)
        rows = store.health()
        if ac.health is None:
            health = None
        elif health is None:
            health = NumberHealth(ac.health)
            for tn, data in (await asyncio.to_thread(rows.load)).items():
                health.restore(tn, data)
            health.dirty.clear()
        else:  # a reload: the statistics carry on under the new limits
            health.limits = ac.health
        accounts = AccountDirectory(list(ac.accounts))
        dialer_sources += accounts.all_sources()  # accounts' trunks are admitted
        authenticator = Authenticator(
            signers={s.name: Signer(SigningIdentity(name=s.name, key=s.key, x5u=s.x5u))
                     for s in ac.signing},
            inventory=inventory, policy=ac.policy, health=health,
            state_of=regions.state_of_npa, stats=stats, clock=time.perf_counter)
        authenticator.shared_picks = bool(ac.health_redis)
        watches = []
        if config.digest is not None:
            creds_version = await asyncio.to_thread(store.credentials_version)
            creds = await asyncio.to_thread(store.credentials)
            if digest is None:
                digest = DigestAuth(config.digest, secret=os.urandom(32))
            digest.config = config.digest
            digest.set_credentials(creds)
            parts.digest = digest
            watches.append(Watch("digest credentials", store.credentials_version,
                                 store.credentials, digest.set_credentials, creds_version))
        # Brands: the accounts' names from the config, those set with the CLI over them.
        configured = {f"account:{a.name}": Brand(name=a.brand) for a in ac.accounts if a.brand}
        auth_ = authenticator

        def set_brands(stored: dict[str, Brand]) -> None:
            auth_.brands = {**configured, **stored}

        brands_version = await asyncio.to_thread(store.brands_version)
        set_brands(await asyncio.to_thread(store.brands))
        watches.append(Watch("brands", store.brands_version, store.brands, set_brands,
                             brands_version))
        parts.inventory = InventorySync(
            store, extra=ac.numbers, version=inventory.version,
            apply=authenticator.set_inventory, interval=ac.refresh_interval, watches=watches)
        if ac.store_url.startswith(("postgresql://", "postgres://")):
            from .store.postgres import InventoryListener

            parts.listener = InventoryListener(ac.store_url, parts.inventory.notify)
        if health is not None and writer:  # one writer of the replica
            parts.writer = HealthWriter(health, rows, interval=ac.health_flush_interval)
        for s in ac.signing:
            if s.cert_info is not None:
                parts.expiry[s.name] = s.cert_info.not_after
                if s.serve_path:
                    parts.served[s.serve_path] = (s.cert_info.pem, s.cert_info.not_after)
    vc = config.verify
    if vc is not None:
        parts.feed = build_verification(vc, stats=stats, counters=counters,
                                        clock=time.perf_counter)
        verification = parts.feed.service
    parts.services = Services(
        dialer_sources=SourceFilter(dialer_sources, allow_any=ec.dialer.allow_any_source),
        carrier_sources=SourceFilter(ec.carrier.allowed_sources,
                                     allow_any=ec.carrier.allow_any_source),
        accounts=accounts, authenticator=authenticator, verification=verification,
        verify_policy=vc.policy if vc is not None else VerifyPolicy(),
        health=health if ac is not None else None, digest=parts.digest)
    parts.health = health if ac is not None else None
    return parts


async def start_front_ends(config: Config, parts: Parts, *, stats: Stats,
                           counters: Counter[str],
                           publish: Callable[[HealthEvent], None] | None, shared: bool,
                           rest: bool, services: Callable[[], Services | None],
                           feed: Callable[[], CredentialFeed | None],
                           ) -> tuple[EngineShell | None, RestApi | None]:
    """The SIP 302 server (in every worker, sharing the port) and the REST API (``rest``:
    worker 0 only), when the configuration has them."""
    tc, rc = config.transport, config.redirect
    redirect = api = None
    if rc is not None:
        engine = RedirectEngine(rc, parts.services, rng=os.urandom, stats=stats)
        redirect = EngineShell(engine, counters=counters, timer_resolution=tc.timer_resolution)
        redirect.publish = publish
        await redirect.listen([(Side.REDIRECT, rc.host, rc.port)], tcp=tc.tcp, shared=shared,
                              udp_buffer=tc.udp_buffer,
                              max_message_size=rc.max_message_size,
                              max_tcp_connections=tc.max_tcp_connections,
                              max_tcp_pending_bytes=tc.max_tcp_pending_bytes,
                              tcp_connect_timeout=tc.tcp_connect_timeout,
                              max_tcp_per_source=tc.max_tcp_per_source)
    if config.rest is not None and rest:
        api = RestApi(config.rest, services=services, feed=feed, stats=stats,
                      api_keys=config.auth.api_keys if config.auth else {})
        await api.start()
    return redirect, api


class Application:
    """One worker of the service (the only one unless ``[transport] workers`` says more)."""

    def __init__(self, config: Config, *, worker: WorkerLink | None = None,
                 children: tuple[int, ...] = ()) -> None:
        self.config = config
        self.worker = worker
        self.worker_index = worker.index if worker is not None else 0
        self.children = Children(children, on_death=self.request_stop)
        self.counters: Counter[str] = Counter()  # I/O events
        self.stats = Stats()  # the engine's and the STI core's counters
        self.gc = GcWatch()
        self.regions = Regions()
        self.health: NumberHealth | None = None  # the replica: lives across reloads
        self.parts: Parts | None = None
        self.engine: ProxyEngine | None = None
        self.shell: EngineShell | None = None
        self.dispatch: WorkerDispatch | None = None
        self.admin: AdminServer | None = None
        self.redirect: EngineShell | None = None  # the 302 front end, when configured
        self.rest: RestApi | None = None  # the ATIS-1000082 front end (worker 0)
        self.certificates = CertificateRepository()  # the chains behind x5u (admin server)
        self.renewer: Renewer | None = None  # ACME renewal (worker 0)
        self.shared: SharedHealth | None = None  # number health shared in Redis
        self.records: RecordWriter | None = None  # call records written behind
        self._store_of: Callable[[], Store] | None = None  # opens the store anew
        self._recording: asyncio.Task[None] | None = None
        self.webhook: WebhookSender | None = None  # records to the CRM (worker 0)
        self._sending: asyncio.Task[None] | None = None
        self._renewing: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()  # fetchers replaced by a reload
        self._housekeeping: asyncio.Task[None] | None = None
        self._reloading: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.registry = make_registry(self)

    # -- the bundle -------------------------------------------------------------------------
    def _engine_config(self, config: Config) -> EngineConfig:
        return engine_config(config, self.worker.count if self.worker is not None else 1)

    async def _build(self, config: Config) -> Parts:
        parts = await build_parts(config, health=self.health, regions=self.regions,
                                  digest=self.parts.digest if self.parts is not None else None,
                                  stats=self.stats, counters=self.counters,
                                  writer=self.worker_index == 0)
        self.health = parts.health
        return parts

    def _wire(self, parts: Parts) -> None:
        """The shells fetch through this configuration's feed and hear from it."""
        for shell in (self.shell, self.redirect):
            if shell is None:
                continue
            shell.fetch = parts.feed.request if parts.feed is not None else None
            if parts.feed is not None:
                parts.feed.fronts.append(shell)

    async def _start_front_ends(self, parts: Parts) -> None:
        self.redirect, self.rest = await start_front_ends(
            self.config, parts, stats=self.stats, counters=self.counters,
            publish=self._publish(),
            shared=self.worker is not None, rest=self.worker_index == 0,
            services=self._services,
            feed=lambda: self.parts.feed if self.parts is not None else None)

    def _listed(self, side: Side, host: str) -> bool:
        """A source the configuration names for that side (TCP room is kept for these)."""
        services = self._services()
        if services is None:
            return False
        sources = services.dialer_sources if side is Side.DIALER else services.carrier_sources
        return sources.lists(host)

    def _publish(self) -> Callable[[HealthEvent], None] | None:
        """Where this worker's number-health events go: Redis, else the other workers."""
        if self.shared is not None:
            return self.shared.publish
        return self.dispatch.publish if self.dispatch is not None else None

    def _owned(self, tn: str) -> bool:
        services = self._services()
        auth = services.authenticator if services is not None else None
        return auth is not None and auth.inventory.owner(tn) is not None

    def _services(self) -> Services | None:
        return self.parts.services if self.parts is not None else None

    # -- start and stop -----------------------------------------------------------------------
    async def start(self) -> None:
        self.config = await resolve_next_hops(self.config)
        tc = self.config.transport
        if use_core(self.config.sip_core) == "compiled":
            if engine_core() == "compiled":
                log.info("SIP core: compiled (C); engine: compiled (mypyc)")
            else:
                log.warning("SIP core: compiled (C); engine: Python (%s); it takes more CPU "
                            "per call (README, performance)", FROM_SOURCE)
        else:
            log.warning("SIP core: Python%s; it takes more CPU per call (README, performance)",
                        "" if self.config.sip_core == "python" else
                        " (the compiled core is not built in this install: no C compiler "
                        "when it was installed)")
        self.parts = parts = await self._build(self.config)
        self.certificates.update(parts.served, time.time())
        self.engine = ProxyEngine(self._engine_config(self.config), parts.services,
                                  rng=os.urandom, stats=self.stats)
        self.shell = shell = EngineShell(self.engine, counters=self.counters,
                                         timer_resolution=tc.timer_resolution,
                                         worker=self.worker)
        ac = self.config.auth
        rc = self.config.records
        if ac is not None:  # a connection of their own for the writers and the page
            self._store_of = functools.partial(open_store, path=ac.store_path,
                                               url=ac.store_url, instance=ac.store_instance)
        if rc.enabled and self._store_of is not None and ac is not None:
            self.engine.record_calls(instance=ac.store_instance, worker=self.worker_index)
            store_of = self._store_of
            self.records = RecordWriter(rc, store_of, counters=self.counters,
                                        worker=self.worker_index)
            shell.record = self.records.add
            await self.records.recover(Journal(
                rc.journal_dir or ac.store_path.parent,
                "records-journal-" + re.sub(r"[^A-Za-z0-9_.-]", "_", ac.store_instance)
                + f"-w{self.worker_index}"))
            self._recording = asyncio.get_running_loop().create_task(self.records.run())
            if self.config.webhook is not None and self.worker_index == 0:
                self.webhook = WebhookSender(self.config.webhook, store_of,
                                             counters=self.counters)
                self._sending = asyncio.get_running_loop().create_task(self.webhook.run())
        if self.worker is not None:
            self.dispatch = WorkerDispatch(self.worker, shell, snapshot=lambda: snapshot(self),
                                           counters=self.counters)
            self.dispatch.health = self.health
            self.dispatch.digest = lambda: self.parts.digest if self.parts is not None else None
            shell.publish = self.dispatch.publish
            if self.parts is not None and self.parts.digest is not None:
                self.parts.digest.publish = self.dispatch.publish_digest
        ac = self.config.auth
        if ac is not None and ac.health_redis and self.health is not None:
            self.shared = SharedHealth(
                ac.health_redis, instance=ac.store_instance, worker=self.worker_index,
                health=lambda: self.health, counters=self.counters,
                fallback=self.dispatch.publish if self.dispatch is not None else None,
                timeout=ac.health_redis_timeout, stream_max=ac.health_redis_stream_max)
            await self.shared.start()
            shell.publish = self.shared.publish
            shell.pick = self.shared.pick
        await self._start_front_ends(parts)
        self._wire(parts)
        parts.run()
        ec = self.config.engine
        await shell.listen([(s.name, s.host, s.port) for s in (ec.dialer, ec.carrier)],
                           tcp=tc.tcp, shared=self.worker is not None, udp_buffer=tc.udp_buffer,
                           max_message_size=ec.max_message_size,
                           max_tcp_connections=tc.max_tcp_connections,
                           max_tcp_pending_bytes=tc.max_tcp_pending_bytes,
                           tcp_connect_timeout=tc.tcp_connect_timeout,
                           max_tcp_per_source=tc.max_tcp_per_source,
                           tcp_reserved_for_trusted=tc.tcp_reserved_for_trusted,
                           trusted=self._listed, tls=side_tls(self.config))
        if self.dispatch is not None:
            self.dispatch.start()
        if self.config.admin.enabled and self.worker_index == 0:
            await self._start_admin()
        self._housekeeping = asyncio.get_running_loop().create_task(self._housekeep())
        ac = self.config.auth
        if self.worker_index == 0 and self.config.acme is not None and ac is not None and \
                any(s.acme for s in ac.signing):
            self.renewer = Renewer(self.config, reload=self._schedule_reload)
            self._renewing = asyncio.get_running_loop().create_task(self.renewer.run())
        self.gc.start(tc.gc_threshold)
        if self.dispatch is not None and self.worker_index != 0:
            self.dispatch.say_ready()
        tls_ports = [f"{s.name} tls {s.tls_port}" for s in (ec.dialer, ec.carrier) if s.tls_port]
        log.info("listening: dialer %s:%d, carrier %s:%d (udp%s)%s%s", ec.dialer.host,
                 ec.dialer.port, ec.carrier.host, ec.carrier.port, "+tcp" if tc.tcp else "",
                 "".join(f", {t}" for t in tls_ports),
                 f", worker {self.worker_index} of {self.worker.count}"
                 if self.worker is not None else "")

    async def _start_admin(self) -> None:
        self.admin = admin = AdminServer(self.config.admin.host, self.config.admin.port,
                                         readiness=self.readiness, core=core_in_use(),
                                         engine=engine_core(),
                                         limits=self.config.admin.limits, stats=self.stats)
        ac = self.config.auth
        self.certificates.add_to(admin, [s.serve_template for s in (ac.signing if ac else ())
                                         if s.serve_template])
        admin.add_get("/metrics", self._metrics)
        cfg = self.config.admin
        auth = AdminAuth(AdminCredential(user=cfg.user, password=cfg.password)
                         if cfg.password_file is not None else None)
        api = HealthApi(lambda: self.health, self._publish(), owned=self._owned,
                        country_code=ac.policy.country_code if ac is not None else "1")
        api.add_to(admin, auth.guard)

        def numbers() -> list[dict[str, Any]]:
            health, services = self.health, self._services()
            auth_ = services.authenticator if services is not None else None
            if health is None:
                return []
            now = time.time()
            owner = auth_.inventory.owner if auth_ is not None else (lambda tn: None)
            return [{**health.report(tn, now), "account": account}
                    for tn in sorted(health.numbers) if (account := owner(tn)) is not None]

        def records(since: float) -> list[dict[str, Any]]:
            if self._store_of is None:
                return []
            store = self._store_of()
            try:
                return list(store.records(since))
            finally:
                store.close()

        def result(answer: tuple[int, dict[str, object]]) -> dict[str, Any] | str:
            status, body = answer
            return body if status == 200 else str(body.get("error"))

        services = self._services
        TrustCenter(auth, PageData(
            numbers=numbers,
            certificates=lambda: dict(self.parts.expiry) if self.parts is not None else {},
            brands=lambda: dict(s.authenticator.brands) if (s := services()) is not None
            and s.authenticator is not None else {},
            records=records,
            accounts=lambda: list(self.config.auth.accounts) if self.config.auth else [],
            limits=lambda: self.health.limits if self.health is not None else HealthLimits(),
            quarantine=lambda tn, hours: result(api.do_quarantine(tn, hours)),
            release=lambda tn: result(api.do_release(tn)))).add_to(admin.app)
        await admin.start()

    def readiness(self) -> dict[str, bool]:
        parts = self.parts
        checks = {"listeners": self.shell is not None and self.shell.listening and (
            self.redirect is None or self.redirect.listening)}
        if self.dispatch is not None:  # worker 0: every other worker started and is alive
            others = self.dispatch.link.count - 1
            checks["workers"] = len(self.children) == others == len(self.dispatch.ready)
        if parts is not None and parts.services.authenticator is not None:
            checks["keys"] = bool(parts.services.authenticator.signers)
            checks["store"] = parts.inventory is None or parts.inventory.ok
        if self.config.verify is not None:
            checks["trust_anchors"] = bool(self.config.verify.anchors)
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

    def _schedule_reload(self) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> None:
        """Re-read the configuration file and apply it without dropping calls: accounts,
        signing identities, the inventory, verification policy and trust, limits and timers
        take effect for new requests; transactions and calls in flight carry on. Listener
        addresses and next hops need a restart (logged)."""
        try:
            new = await asyncio.to_thread(load_config, self.config.path)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            if self.renewer is not None:
                self.renewer.configured(None)
            return
        assert self.engine is not None and self.shell is not None and self.parts is not None
        ec, nec = self.config.engine, new.engine
        for side, nside in ((ec.dialer, nec.dialer), (ec.carrier, nec.carrier)):
            if (side.host, side.port, side.next_hop_host, side.next_hop_port,
                    side.next_hop_transport) != (nside.host, nside.port, nside.next_hop_host,
                                                 nside.next_hop_port, nside.next_hop_transport):
                log.warning("[%s] listen/next_hop changes need a restart; kept as running",
                            side.name)
        old = self.parts
        await old.stop(close_fetcher=False)
        new = replace(new, engine=replace(nec, dialer=ec.dialer, carrier=ec.carrier))
        parts = await self._build(new)
        # One step, no await: the event loop sees the old bundle or the new one.
        self.engine.replace(services=parts.services, config=self._engine_config(new))
        if self.redirect is not None:
            redirect = self.redirect.engine
            assert isinstance(redirect, RedirectEngine)
            redirect.replace(services=parts.services, config=new.redirect)
        if self.rest is not None:
            self.rest.api_keys = new.auth.api_keys if new.auth else {}
        if old.services.authenticator and parts.services.authenticator:
            parts.services.authenticator.carry_over(old.services.authenticator)
        if old.services.verification and parts.services.verification:
            parts.services.verification.carry_over(old.services.verification)
        self._wire(parts)
        if self.dispatch is not None:
            self.dispatch.health = self.health
            if parts.digest is not None:
                parts.digest.publish = self.dispatch.publish_digest
        self.parts, self.config = parts, new
        self.certificates.update(parts.served, time.time())
        if self.renewer is not None:
            self.renewer.configured(new)
        parts.run()
        timeout = new.verify.fetch.timeout if new.verify is not None else 5.0
        retiring = old.retire(timeout + 1)
        if retiring is not None:
            self._retiring.add(retiring)
            retiring.add_done_callback(self._retiring.discard)
        logging.getLogger().setLevel(new.log.level.upper())
        log.info("configuration reloaded from %s", new.path)
        self.children.signal(signal.SIGHUP)

    async def stop(self) -> None:
        self.children.stopping = True
        self.children.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.transport.shutdown_grace
        engine = self.engine
        if self.redirect is not None:
            redirect = self.redirect.engine
            assert isinstance(redirect, RedirectEngine)
            redirect.draining = True
        if engine is not None:
            engine.draining = True
            while engine.pending_requests and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if engine.pending_requests:
                log.info("stopping with %d requests still unanswered", engine.pending_requests)
            engine.shutdown()
        for task in (self._housekeeping, self._renewing, self._recording, self._sending,
                     *self._retiring):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.dispatch is not None:
            await self.children.wait(deadline + 5.0)
            self.dispatch.stopped = True
            self.dispatch.link.drain()  # the others' last number-health events
            self.dispatch.link.flush()
            self.dispatch.link.close()
        if self.records is not None:  # the calls still open are recorded as they stand
            for record in engine.records.close(time.time()) if engine is not None else ():
                self.records.add(record)
            await self.records.close()
        if self.webhook is not None:
            await self.webhook.close()
        if self.parts is not None:
            await self.parts.stop()
            if self.parts.store is not None:
                self.parts.store.close()
        for shell in (self.shell, self.redirect):
            if shell is not None:
                await shell.close()
        for server in (self.admin, self.rest):
            if server is not None:
                await server.stop()
        if self.shared is not None:
            await self.shared.close()
        self.gc.stop()
        log.info("stopped")

    @property
    def exit_code(self) -> int:
        return self.children.exit_code

    async def _housekeep(self) -> None:
        tc = self.config.transport
        idle, first = tc.tcp_idle_timeout, tc.tcp_first_message_timeout
        interval = min(idle, first / 2, 10.0)
        if len(self.children):
            interval = min(interval, 0.5)  # also how soon a dead worker is noticed
        while True:
            await asyncio.sleep(interval)
            self.children.reap()
            now = asyncio.get_running_loop().time()
            for manager in (self.shell.tcp.values() if self.shell is not None else ()):
                manager.close_idle(now, idle, first)

    # -- metrics ----------------------------------------------------------------------------
    def metrics_snapshot(self) -> dict[str, Any]:
        """This worker's counters plus the others' (fetched by the /metrics handler)."""
        others = self.dispatch.peer_snapshots if self.dispatch is not None else []
        return merge([snapshot(self), *others])

    async def _metrics(self, request: Any) -> Any:
        from aiohttp import web

        if self.dispatch is not None:
            await self.dispatch.gather_snapshots()
        return web.Response(body=exposition(self.registry), content_type="text/plain",
                            charset="utf-8", headers={"X-Content-Type-Options": "nosniff"})


async def _close_later(fetcher: Fetcher, delay: float) -> None:
    try:
        await asyncio.sleep(delay)
    finally:  # at once when the service stops first
        await fetcher.close()


def side_tls(config: Config) -> dict[Side, SideTls]:
    """The TLS listeners and next-hop connections of both sides, from [tls] and the sides'
    listen_tls / next_hop_transport."""
    settings = config.tls
    out: dict[Side, SideTls] = {}
    if settings is None:
        return out
    for side in (config.engine.dialer, config.engine.carrier):
        outbound = side.next_hop_transport is Transport.TLS
        if not side.tls_port and not outbound:
            continue
        out[side.name] = SideTls(
            host=side.host, port=side.tls_port,
            server=settings.server_context(side.tls_verify_clients) if side.tls_port else None,
            client=settings.client_context() if outbound else None,
            names={(side.next_hop_host, side.next_hop_port): side.next_hop_tls_name},
            handshake_timeout=settings.handshake_timeout)
    return out


async def resolve_next_hops(config: Config) -> Config:
    """Next hops may be host names: resolve them once, at start (never per message)."""
    ec = config.engine
    sides = []
    for side in (ec.dialer, ec.carrier):
        try:
            ipaddress.ip_address(side.next_hop_host)
            sides.append(side)
            continue
        except ValueError:
            pass
        infos = await asyncio.get_running_loop().getaddrinfo(
            side.next_hop_host, side.next_hop_port, type=socket.SOCK_DGRAM)
        if not infos:
            raise ConfigError(f"[{side.name}] next_hop {side.next_hop_host} does not resolve")
        sides.append(replace(side, next_hop_host=str(infos[0][4][0])))
    return replace(config, engine=replace(ec, dialer=sides[0], carrier=sides[1]))


def run_app(config: Config) -> int:
    """Run the service in the foreground (uvloop when it is installed) until it is stopped;
    returns the exit status. With ``[transport] workers`` above 1 this process is worker 0
    and forks the others before any event loop or thread exists."""
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop

    def worker(link: WorkerLink | None, children: tuple[int, ...]) -> int:
        async def main() -> int:
            app = Application(config, worker=link, children=children)
            await app.run()
            return app.exit_code

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main())

    return run_workers(config.transport.workers, worker)


__all__ = ["Application", "build_verification", "run_app"]
