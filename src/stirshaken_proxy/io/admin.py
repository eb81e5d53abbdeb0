"""The admin HTTP server: health, readiness, metrics and the development certificate repository."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

Readiness = Callable[[], dict[str, bool]]


class AdminServer:
    def __init__(self, host: str, port: int, *, readiness: Readiness) -> None:
        self.host = host
        self.port = port
        self.readiness = readiness
        self.app = web.Application()
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self._runner: web.AppRunner | None = None

    def add_route(self, path: str, handler: Callable[[web.Request], object]) -> None:
        self.app.router.add_get(path, handler)  # type: ignore[arg-type]

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = self.readiness()
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
