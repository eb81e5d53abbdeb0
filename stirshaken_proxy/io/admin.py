"""The admin HTTP server: health, readiness, metrics, number health and quarantine, and the
development certificate repository (each chain at its x5u path)."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..policy.health import HealthEvent, NumberHealth
from ..sip.numbers import canonical_digits
from .httpguard import Guard, GuardedRunner, HttpLimits, body_deadline, plain_error

log = logging.getLogger(__name__)

Readiness = Callable[[], dict[str, bool]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminServer:
    def __init__(self, host: str, port: int, *, readiness: Readiness,
                 core: str = "python", engine: str = "python",
                 limits: HttpLimits | None = None,
                 stats: Counter[tuple[str, ...]] | None = None) -> None:
        self.host = host
        self.port = port
        self.readiness = readiness
        # Named in /readyz: the SIP core in use (compiled: C, or python) and how the engine
        # runs (compiled by mypyc, or python: its source).
        self.core = core
        self.engine = engine
        self.guard = Guard("admin", limits or HttpLimits(max_connections=256,
                                                        max_per_source=32),
                           plain_error, stats)
        self.app = web.Application(middlewares=[body_deadline(self.guard.limits, self.guard)])
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self._runner: web.AppRunner | None = None

    def add_get(self, path: str, handler: Handler) -> None:
        self.app.router.add_get(path, handler)

    def add_post(self, path: str, handler: Handler) -> None:
        self.app.router.add_post(path, handler)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = self.readiness()
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks, "core": self.core,
                                  "engine": self.engine},
                                 status=200 if ready else 503)

    async def start(self) -> None:
        self._runner = GuardedRunner(self.app, self.guard)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


MAX_QUARANTINE_HOURS = 24 * 365


class HealthApi:
    """``GET /numbers/health``, ``POST /numbers/{tn}/quarantine`` and ``/release``. The
    replica in use is asked for each time (a reload may turn number health on or off).
    A number must be a telephone number the inventory holds (400, 404 otherwise): no junk
    entries in the health table."""

    def __init__(self, health: Callable[[], NumberHealth | None],
                 publish: Callable[[HealthEvent], None] | None, *,
                 owned: Callable[[str], bool], country_code: str = "1") -> None:
        self.health = health
        self.publish = publish  # to the other workers' replicas
        self.owned = owned  # the number is in the inventory
        self.country_code = country_code

    def _target(self, text: str) -> tuple[NumberHealth, str] | tuple[int, str]:
        """The replica and the canonical number a state-changing request is about, or the
        status and error that refuse it."""
        health = self.health()
        if health is None:
            return 404, "number health is off"
        tn = canonical_digits(text, country_code=self.country_code) if len(text) <= 32 \
            else None
        if tn is None or len(tn) > 15:
            return 400, "not a telephone number"
        if not self.owned(tn):
            return 404, f"{tn} is not in the inventory"
        return health, tn

    def do_quarantine(self, text: str, hours: float,
                      reason: str = "flagged by operator") -> tuple[int, dict[str, object]]:
        target = self._target(text)
        if isinstance(target[0], int):
            return target[0], {"error": target[1]}
        health, tn = target
        if not math.isfinite(hours) or not 0 < hours <= MAX_QUARANTINE_HOURS:
            return 400, {"error": "hours must be a number over 0 and at most "
                         f"{MAX_QUARANTINE_HOURS}"}
        reason = reason[:200]
        self._share(health.quarantine(tn, reason, time.time(), hours * 3600))
        log.info("number %s quarantined by the operator for %.1f h: %s", tn, hours, reason)
        return 200, health.report(tn, time.time())

    def do_release(self, text: str) -> tuple[int, dict[str, object]]:
        target = self._target(text)
        if isinstance(target[0], int):
            return target[0], {"error": target[1]}
        health, tn = target
        self._share(health.release(tn, time.time()))
        log.info("number %s released by the operator", tn)
        return 200, health.report(tn, time.time())

    def add_to(self, admin: AdminServer, guard: Callable[..., Handler]) -> None:
        """``guard``: the admin credential check (the report names every number and why it
        is quarantined: it needs the credential too)."""
        admin.add_get("/numbers/health", guard(self.report, reads=True))
        admin.add_post("/numbers/{tn}/quarantine", guard(self.quarantine))
        admin.add_post("/numbers/{tn}/release", guard(self.release))

    async def report(self, request: web.Request) -> web.Response:
        health = self.health()
        if health is None:
            return web.json_response({"error": "number health is off"}, status=404)
        now = time.time()
        return web.json_response([health.report(tn, now) for tn in sorted(health.numbers)])

    async def quarantine(self, request: web.Request) -> web.Response:
        try:
            hours = float(request.query.get("hours", "24"))
        except ValueError:
            hours = math.nan
        status, body = self.do_quarantine(request.match_info["tn"], hours,
                                          request.query.get("reason", "flagged by operator"))
        return web.json_response(body, status=status)

    async def release(self, request: web.Request) -> web.Response:
        status, body = self.do_release(request.match_info["tn"])
        return web.json_response(body, status=status)

    def _share(self, event: HealthEvent) -> None:
        if self.publish is not None:
            self.publish(event)


class CertificateRepository:
    """The certificate repository behind x5u (development, or a small deployment): each
    identity's chain at its serve path. With "{serial}" in the path every certificate has its
    own URL, and a replaced chain stays served until it expires (calls signed with it are
    still being verified, and verifiers cache by URL)."""

    def __init__(self) -> None:
        self.chains: dict[str, tuple[bytes, float]] = {}  # path -> (chain, notAfter)

    def update(self, chains: dict[str, tuple[bytes, float]], now: float) -> None:
        kept = {p: c for p, c in self.chains.items() if c[1] > now}
        self.chains = {**kept, **chains}

    def add_to(self, admin: AdminServer, templates: list[str]) -> None:
        for template in dict.fromkeys(templates):  # identities may share a "{serial}" path
            admin.add_get(template.replace("{serial}", "{serial:[0-9a-f]+}"), self.serve)

    async def serve(self, request: web.Request) -> web.Response:
        found = self.chains.get(request.path)
        if found is None:
            return web.Response(status=404, text="no such certificate\n")
        return web.Response(body=found[0], content_type="application/pem-certificate-chain",
                            headers={"Cache-Control": "max-age=86400"})
