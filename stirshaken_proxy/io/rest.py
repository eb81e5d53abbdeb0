"""The ATIS-1000082 HTTP interface: ``POST /stir/v1/signing`` and ``POST /stir/v1/verification``
for an SBC or softswitch that asks over HTTP instead of SIP.

Callers authenticate with a per-account API key (``Authorization: Bearer <key>``); the key
selects the account, so the attestation depends on who asks, exactly as for calls from the
account's trunk. Signing and verification are the same STI core objects the SIP front ends
call; verification awaits the same single-flight, SSRF-guarded fetch and cache.

Errors are ATIS-1000082 bodies: ``{"requestError": {"serviceException" | "policyException":
{"messageId", "text", "variables"}}}``. The SVC4000-SVC4007, POL4050 and POL5000 codes are the
ones ATIS-1000082 implementations use; POL4010 (no or unknown API key, 401), POL4030 (the
account may not sign that, 403) and POL5030 (overload, 503) are ours, in the same form.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from ..config import RestConfig
from ..engine.services import Services
from ..policy.accounts import Account
from ..sip.numbers import canonical_digits
from ..stats import Stats
from ..stir.passport import Attestation, ClaimError, check_origid
from ..stir.signing import CallFacts, Refusal, Signed, Unsigned
from ..stir.verify import Verstat
from .fetcher import CredentialFeed
from .httpguard import Guard, GuardedRunner, read_body

log = logging.getLogger(__name__)

# messageId -> (text with %1, %2 for the variables, HTTP status)
ERRORS: dict[str, tuple[str, int]] = {
    "SVC4000": ("Missing request body", 400),
    "SVC4001": ("Missing mandatory parameter '%1'", 400),
    "SVC4002": ("Requested response body type '%1' is not supported", 406),
    "SVC4003": ("Requested resource was not found", 404),
    "SVC4004": ("Unsupported request body type, expected '%1'", 415),
    "SVC4005": ("Invalid '%1' parameter value: %2", 400),
    "SVC4006": ("Failed to parse received message body: %1", 400),
    "POL4010": ("Unauthorized: %1", 401),
    "POL4030": ("Forbidden: %1", 403),
    "POL4050": ("Method not allowed", 405),
    "POL5000": ("Internal Server Error. Please try again later", 500),
    "POL5030": ("Service unavailable, try again later", 503),
}
JSON = "application/json"


class ApiError(Exception):
    def __init__(self, message_id: str, *variables: str, status: int | None = None) -> None:
        super().__init__(message_id)
        self.message_id = message_id
        self.variables = list(variables)
        self.status = status if status is not None else ERRORS[message_id][1]

    def body(self) -> dict[str, Any]:
        """The ATIS-1000082 requestError body."""
        text = ERRORS[self.message_id][0]
        for n, value in enumerate(self.variables, 1):
            text = text.replace(f"%{n}", value)
        kind = "serviceException" if self.message_id.startswith("SVC") else "policyException"
        return {"requestError": {kind: {"messageId": self.message_id, "text": text,
                                        "variables": self.variables}}}

    def response(self) -> web.Response:
        body = self.body()
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else \
            {"Retry-After": "1"} if self.status == 503 else None
        return web.json_response(body, status=self.status, headers=headers)


MAX_JSON_DEPTH = 32  # nesting of a request body (ATIS-1000082's bodies have 3 levels)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 §6)")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:20]} is out of range")
    return value


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, or the ATIS 400 (SVC4006) whatever is wrong with it: not
    UTF-8 (strictly, RFC 8259 §8.1: no surrogates), not JSON, NaN or Infinity (or a number
    that overflows to it), a number too long to convert, or nested deeper than MAX_JSON_DEPTH
    (checked before parsing, so no body makes the parser recurse far)."""
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        _check_depth(raw)
    try:
        return json.loads(raw.decode(), parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError("SVC4006", f"not JSON ({str(exc)[:120]})") from None


def _check_depth(raw: bytes) -> None:
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:  # brackets outside strings: the nesting the parser would recurse into
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    raise ApiError("SVC4006", f"nested deeper than {MAX_JSON_DEPTH} levels")
        elif byte in (0x5D, 0x7D):
            depth -= 1


def key_hash(key: str) -> str:
    """How an API key is stored: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class RestApi:
    """The two endpoints over the services in use (asked for each request: a reload replaces
    them)."""

    def __init__(self, config: RestConfig, *, services: Callable[[], Services | None],
                 feed: Callable[[], CredentialFeed | None], api_keys: dict[str, str],
                 stats: Stats, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.services = services
        self.feed = feed
        self.api_keys = api_keys  # "sha256:<hex>" -> account name
        self.stats = stats
        self.clock = clock
        self._in_flight = 0
        self._in_flight_by_account: Counter[str] = Counter()
        self.guard = Guard("rest", config.limits, self._malformed, stats)
        self.app = web.Application(client_max_size=config.max_body_bytes,
                                   middlewares=[self._errors])
        self.app.router.add_route("*", "/stir/v1/signing", self._signing)
        self.app.router.add_route("*", "/stir/v1/verification", self._verification)
        self._runner: web.AppRunner | None = None

    # -- serving ----------------------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext | None:
        c = self.config
        if c.tls_certificate is None or c.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(c.tls_certificate), str(c.tls_key))
        if c.tls_client_ca is not None:
            context.load_verify_locations(cafile=str(c.tls_client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def start(self) -> None:
        self._runner = GuardedRunner(self.app, self.guard)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port,
                           ssl_context=self.ssl_context())
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        """Every answer is JSON: ours, aiohttp's own (404, 405, 413) and any failure."""
        endpoint = request.path.rsplit("/", 1)[-1] or "/"
        try:
            response = await handler(request)
        except ApiError as exc:
            response = exc.response()
        except web.HTTPNotFound:
            response = ApiError("SVC4003").response()
            endpoint = "unknown"
        except web.HTTPMethodNotAllowed:
            response = ApiError("POL4050").response()
        except web.HTTPException as exc:
            response = ApiError("SVC4006", exc.reason, status=exc.status).response()
        except Exception:
            log.exception("REST request %s failed", request.path)
            response = ApiError("POL5000").response()
        if response.status == 408:
            response.force_close()  # the rest of the body is not waited for
        self.stats[("rest_requests", endpoint, str(response.status))] += 1
        return response

    @staticmethod
    def _malformed(status: int, reason: str) -> tuple[bytes, str]:
        """The answer to a request that is not HTTP (io.httpguard), in ATIS-1000082's form."""
        error = ApiError("SVC4006", f"not an HTTP request ({status} {reason})", status=status)
        return json.dumps(error.body()).encode(), JSON

    @contextlib.contextmanager
    def _share(self, account: Account) -> Iterator[None]:
        """Admission of an authenticated request, before its body is read: at most
        ``max_in_flight_per_account`` of one account's requests at once (one account's
        clients, however slow or many, cannot hold the others' share), and ``max_in_flight``
        in all; past either, 503 with Retry-After."""
        name = account.name
        if self._in_flight_by_account[name] >= self.config.max_in_flight_per_account:
            self.stats[("http_refused", "rest", "account_share")] += 1
            raise ApiError("POL5030")
        if self._in_flight >= self.config.max_in_flight:
            raise ApiError("POL5030")
        self._in_flight += 1
        self._in_flight_by_account[name] += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            self._in_flight_by_account[name] -= 1
            if self._in_flight_by_account[name] <= 0:
                del self._in_flight_by_account[name]

    # -- the parts of every request ------------------------------------------------------------
    def _account(self, request: web.Request) -> Account:
        if request.method != "POST":
            raise ApiError("POL4050")
        auth = request.headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError("POL4010", "an API key is needed (Authorization: Bearer <key>)")
        name = self.api_keys.get(key_hash(key.strip()))
        services = self.services()
        account = services.accounts.accounts.get(name) if services and name else None
        if account is None:
            raise ApiError("POL4010", "unknown API key")
        return account

    async def _body(self, request: web.Request, wrapper: str) -> dict[str, Any]:
        accept = request.headers.get("Accept", JSON)
        if not any(a.split(";")[0].strip() in (JSON, "application/*", "*/*")
                   for a in accept.split(",")):
            raise ApiError("SVC4002", accept)
        if request.content_type != JSON:
            raise ApiError("SVC4004", JSON)
        try:
            raw = await read_body(request, self.config.limits)
        except web.HTTPRequestEntityTooLarge:
            raise ApiError("SVC4006", f"larger than {self.config.max_body_bytes} bytes",
                           status=413) from None
        except web.HTTPRequestTimeout:
            self.guard.refused("body_timeout")
            raise ApiError("SVC4006", f"not received within {self.config.limits.body_timeout:g} s",
                           status=408) from None
        if not raw:
            raise ApiError("SVC4000")
        data = parse_json(raw)
        if not isinstance(data, dict) or wrapper not in data:
            raise ApiError("SVC4001", wrapper)
        inner = data[wrapper]
        if not isinstance(inner, dict):
            raise ApiError("SVC4005", wrapper, "must be an object")
        return inner

    @staticmethod
    def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
        if name not in body:
            raise ApiError("SVC4001", name)
        value = body[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ApiError("SVC4005", name, "wrong type")
        return value

    def _tn(self, body: dict[str, Any], name: str, many: bool, cc: str) -> list[str]:
        """Canonical numbers of a ``{"tn": ...}`` field (``cc``: the national numbers' country
        code, the signing or the verification policy's)."""
        holder = self._field(body, name, dict)
        if "tn" not in holder:
            raise ApiError("SVC4001", f"{name}.tn")
        value = holder["tn"]
        values = value if many else [value]
        if (many and not isinstance(value, list)) or not values or not all(
                isinstance(v, str) for v in values):
            raise ApiError("SVC4005", f"{name}.tn", "an array of telephone numbers" if many
                           else "a telephone number")
        out = []
        for v in values:
            tn = canonical_digits(v, country_code=cc)
            if tn is None:
                raise ApiError("SVC4005", f"{name}.tn", f"{v!r} is not a telephone number")
            out.append(tn)
        return out

    # -- the endpoints --------------------------------------------------------------------------
    async def _signing(self, request: web.Request) -> web.Response:
        account = self._account(request)
        with self._share(account):
            return await self._sign(request, account)

    async def _sign(self, request: web.Request, account: Account) -> web.Response:
        body = await self._body(request, "signingRequest")
        services = self.services()
        auth = services.authenticator if services is not None else None
        if auth is None:
            raise ApiError("SVC4003")
        cc = auth.policy.country_code
        attest_text = self._field(body, "attest", str)
        try:
            attest = Attestation(attest_text)
        except ValueError:
            raise ApiError("SVC4005", "attest", "must be A, B or C") from None
        dests = self._tn(body, "dest", many=True, cc=cc)
        iat = self._field(body, "iat", int)
        if iat <= 0:
            raise ApiError("SVC4005", "iat", "must be a positive number of seconds")
        orig = self._tn(body, "orig", many=False, cc=cc)[0]
        origid = self._field(body, "origid", str)
        try:
            check_origid(origid)
        except ClaimError as exc:
            raise ApiError("SVC4005", "origid", exc.text) from None
        outcome = auth.sign(CallFacts(account=account, orig=orig, dest=dests[0], date=iat,
                                      attest=attest, more_dests=tuple(dests[1:]),
                                      origid=origid), self.clock())
        if isinstance(outcome, Signed):
            return web.json_response({"signingResponse": {"identity": outcome.identity}})
        if isinstance(outcome, Refusal) and outcome.cause == "stale_date":
            raise ApiError("SVC4005", "iat", f"more than {auth.policy.max_date_skew} s from now")
        if isinstance(outcome, Refusal) and outcome.cause == "invalid_claim":
            raise ApiError("SVC4005", outcome.field, outcome.detail)
        reason = (outcome.phrase if isinstance(outcome, Refusal) else
                  outcome.reason if isinstance(outcome, Unsigned) else "no number free")
        raise ApiError("POL4030", f"account {account.name}: {reason}")

    async def _verification(self, request: web.Request) -> web.Response:
        with self._share(self._account(request)):
            return await self._verify(request)

    async def _verify(self, request: web.Request) -> web.Response:
        body = await self._body(request, "verificationRequest")
        services = self.services()
        cc = services.verify_policy.country_code if services is not None else "1"
        orig = self._tn(body, "from", many=False, cc=cc)[0]
        dests = self._tn(body, "to", many=True, cc=cc)
        when = self._field(body, "time", int)
        identity = self._field(body, "identity", str)
        if not identity.strip():
            raise ApiError("SVC4005", "identity", "empty")
        feed = self.feed()
        if feed is None:
            raise ApiError("SVC4003")
        verdict = await feed.verify([identity], orig=orig, dest=dests[0], date=when,
                                    now=self.clock())
        answer: dict[str, Any] = {"verstat": verdict.verstat.value}
        if verdict.verstat is Verstat.PASSED and verdict.attest:
            answer["attest"] = verdict.attest
        if verdict.code is not None:
            answer.update(reasonCode=verdict.code, reasonText=verdict.phrase,
                          reasonDesc=verdict.reason)
        return web.json_response({"verificationResponse": answer})
