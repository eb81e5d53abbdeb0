"""The HTTP servers' guard (REST and admin): what holds them up when a client is hostile.

- Connections are counted by source address and in all: one past ``max_per_source`` or
  ``max_connections`` is closed as it is accepted (its descriptor freed at once), so a flood
  from one address neither exhausts the process's descriptors nor crowds out other clients.
- A request's head must be complete within ``header_timeout`` of the connection opening (or
  of the previous response on a kept-alive one): a silent or trickling client is closed.
- A request's body is read within ``body_timeout`` (``read_body``), else 408.
- A message that is not HTTP (bad framing, request smuggling, bad chunking) is answered with a
  short error and logged at INFO: what it was, never the bytes sent or a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class HttpLimits:
    header_timeout: float = 10.0  # seconds to send a request's head (and idle keep-alive)
    body_timeout: float = 10.0  # seconds to send a request's body
    max_connections: int = 2048  # open at once, from everywhere
    max_per_source: int = 256  # open at once from one address


# (status, short reason) -> (body, content type) of an answer to a malformed request
ErrorBody = Callable[[int, str], tuple[bytes, str]]


def plain_error(status: int, reason: str) -> tuple[bytes, str]:
    return f"{status} {reason}\n".encode(), "text/plain"


class Guard:
    """The connection counts of one server, and what it refused (``counts``, by reason)."""

    def __init__(self, name: str, limits: HttpLimits, error_body: ErrorBody,
                 stats: Counter[tuple[str, ...]] | None = None) -> None:
        self.name = name
        self.limits = limits
        self.error_body = error_body
        self.stats: Counter[tuple[str, ...]] = stats if stats is not None else Counter()
        self.per_source: Counter[str] = Counter()
        self.open = 0
        self._logged = (0, 0)  # (second, lines logged in it): malformed requests' log lines

    def refused(self, reason: str) -> None:
        self.stats[("http_refused", self.name, reason)] += 1

    def admit(self, host: str) -> bool:
        if self.per_source[host] >= self.limits.max_per_source:
            self.refused("per_source")
            return False
        if self.open >= self.limits.max_connections:
            self.refused("max_connections")
            return False
        self.per_source[host] += 1
        self.open += 1
        return True

    def release(self, host: str) -> None:
        self.open -= 1
        self.per_source[host] -= 1
        if self.per_source[host] <= 0:
            del self.per_source[host]

    def log_malformed(self, remote: str | None, status: int, exc: BaseException | None) -> None:
        """At INFO, ten lines a second at most (a flood of junk must not flood the log)."""
        self.refused("malformed")
        second = int(time.monotonic())
        at, lines = self._logged
        lines = lines + 1 if at == second else 1
        self._logged = (second, lines)
        if lines <= 10:
            log.info("%s: malformed HTTP request from %s answered %d (%s)", self.name, remote,
                     status, type(exc).__name__ if exc is not None else "no detail")


class _Handler(RequestHandler):
    """aiohttp's connection handler, with the guard's admission and error answers."""

    __slots__ = ("_guard", "_host")

    def __init__(self, manager: Server, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._host: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self._guard.admit(host):
            self._manager = None  # connection_lost has nothing to undo
            transport.abort()  # type: ignore[attr-defined]
            return
        self._host = host
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._host is not None:
            self._guard.release(self._host)
            self._host = None
        super().connection_lost(exc)

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status == 500 and exc is not None and not isinstance(exc, HttpProcessingError):
            # Our own failure, not the client's: the operator needs the traceback, the
            # client gets none.
            log.error("%s: request %s failed", self._guard.name, request.path, exc_info=exc)
        else:
            self._guard.log_malformed(request.remote, status, exc)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer is partly sent: no error can follow it")
        reason = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
                  431: "Request Header Fields Too Large", 500: "Internal Server Error",
                  501: "Not Implemented", 504: "Gateway Timeout"}.get(status, "Error")
        body, content_type = self._guard.error_body(status, reason)
        response = web.Response(status=status, body=body, content_type=content_type)
        response.force_close()
        return response


class _GuardedServer(Server):
    guard: Guard

    def __call__(self) -> RequestHandler:
        return _Handler(self, self.guard, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server applies ``guard``."""

    def __init__(self, app: web.Application, guard: Guard) -> None:
        super().__init__(app, access_log=None, keepalive_timeout=guard.limits.header_timeout,
                         lingering_time=min(2.0, guard.limits.body_timeout))
        self.guard = guard

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _GuardedServer  # aiohttp's own server, handing out _Handler
        assert isinstance(server, _GuardedServer)
        server.guard = self.guard
        return server


async def read_body(request: web.Request, limits: HttpLimits) -> bytes:
    """The request's body, whole within ``limits.body_timeout``, or HTTPRequestTimeout (whose
    answer closes the connection: what is left of the body is not waited for)."""
    try:
        async with asyncio.timeout(limits.body_timeout):
            return await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="the request's body did not arrive in time\n"
                                     ) from None


def body_deadline(limits: HttpLimits, guard: Guard) -> Any:
    """A middleware that reads every request's body under the deadline before its handler
    runs (the handler's own ``read()``, ``post()`` or ``json()`` then find it read)."""
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.body_exists:
            try:
                await read_body(request, limits)
            except web.HTTPRequestTimeout as exc:
                guard.refused("body_timeout")
                refusal = web.Response(status=exc.status, text=exc.text)
                refusal.force_close()
                return refusal
        response: web.StreamResponse = await handler(request)
        return response
    return middleware


__all__ = ["ErrorBody", "Guard", "GuardedRunner", "HttpLimits", "body_deadline",
           "plain_error", "read_body"]
