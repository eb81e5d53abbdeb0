"""The Trust Center: one page on the admin server for the sales team's numbers, attestation,
certificates and brands, and the credential every state-changing admin request needs.

- Login with ``[admin] user`` and the password in ``[admin] password_file``; a session cookie
  (HttpOnly, SameSite=Strict, random, expiring) and a per-session CSRF token that every form
  carries; the API's state-changing endpoints take the same credential as HTTP Basic.
- Server-rendered HTML, its style and the attestation chart (inline SVG) in the page itself:
  nothing is fetched from elsewhere, no script, no build step.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import html
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..policy.health import HealthLimits
from ..policy.report import build, mix_chart

SESSION_COOKIE = "sp_session"
SESSION_SECONDS = 8 * 3600.0
MAX_SESSIONS = 1000
MAX_LOGIN_FAILURES = 5  # from one address within LOGIN_WINDOW, then it waits that long
LOGIN_WINDOW = 60.0
e = html.escape


@dataclass(frozen=True, kw_only=True)
class AdminCredential:
    user: str
    password: str

    def matches(self, user: str, password: str) -> bool:
        return hmac.compare_digest(user.encode(), self.user.encode()) & hmac.compare_digest(
            password.encode(), self.password.encode())


class AdminAuth:
    """Sessions of the page, and Basic credentials of the API."""

    def __init__(self, credential: AdminCredential | None) -> None:
        self.credential = credential
        self._sessions: dict[str, tuple[float, str]] = {}  # token -> (expires, csrf)
        self._failures: dict[str, list[float]] = {}  # address -> recent failed logins

    def throttled(self, address: str, now: float) -> bool:
        """The address failed MAX_LOGIN_FAILURES times within LOGIN_WINDOW: neither the
        login form nor Basic credentials are checked for it until the window passes (the
        right password included: a guesser learns nothing)."""
        recent = [t for t in self._failures.get(address, ()) if t > now - LOGIN_WINDOW]
        if recent:
            self._failures[address] = recent
        else:
            self._failures.pop(address, None)
        return len(recent) >= MAX_LOGIN_FAILURES

    def failed(self, address: str, now: float) -> None:
        if len(self._failures) >= MAX_SESSIONS:
            self._failures.clear()
        self._failures.setdefault(address, []).append(now)

    def login(self, user: str, password: str, now: float, address: str = "") -> str | None:
        if self.credential is None or self.throttled(address, now) \
                or not self.credential.matches(user, password):
            self.failed(address, now)
            return None
        self._sessions = {t: s for t, s in self._sessions.items() if s[0] > now}
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        token = secrets.token_urlsafe(32)
        self._sessions[token] = (now + SESSION_SECONDS, secrets.token_urlsafe(24))
        return token

    def session(self, request: web.Request, now: float) -> str | None:
        """The CSRF token of the request's valid session, or None."""
        found = self._sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if found is None or found[0] <= now:
            return None
        return found[1]

    def logout(self, request: web.Request) -> None:
        self._sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)

    def basic(self, request: web.Request, now: float | None = None) -> bool | None:
        """Whether the request's Basic credentials are right: None when it has none. A
        wrong one counts as a failed login of its address."""
        header = request.headers.get("Authorization", "")
        if self.credential is None or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        if self.credential.matches(user, password):
            return True
        self.failed(request.remote or "", time.time() if now is None else now)
        return False

    def guard(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]], *,
              reads: bool = False) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """An admin API endpoint: Basic credentials, or a page session (with its CSRF token
        in ``X-CSRF-Token`` unless the endpoint only ``reads``); else a JSON 401, 403 (no
        credential configured) or 429 (the address is throttled: too many failures)."""
        async def guarded(request: web.Request) -> web.StreamResponse:
            if self.credential is None:
                return web.json_response({"error": "no admin credential is configured "
                                          "([admin] password_file)"}, status=403)
            now = time.time()
            if self.throttled(request.remote or "", now):
                return web.json_response(
                    {"error": "too many failed logins from this address: wait a minute"},
                    status=429, headers={"Retry-After": str(int(LOGIN_WINDOW))})
            basic = self.basic(request, now)
            if basic is None:
                csrf = self.session(request, now)
                basic = csrf is not None and (reads or hmac.compare_digest(
                    request.headers.get("X-CSRF-Token", ""), csrf))
            if not basic:
                return web.json_response({"error": "admin credential required"}, status=401,
                                         headers={"WWW-Authenticate": 'Basic realm="admin"'})
            return await handler(request)
        return guarded


@dataclass(kw_only=True)
class PageData:
    """Where the page reads from (callables: a reload may change them)."""

    numbers: Callable[[], list[dict[str, Any]]]  # each number's health report, with account
    certificates: Callable[[], dict[str, float]]  # signing identity -> notAfter
    brands: Callable[[], dict[str, Any]]  # scope -> Brand
    records: Callable[[float], list[dict[str, Any]]]  # call records since
    limits: Callable[[], HealthLimits]
    accounts: Callable[[], list[Any]]  # policy.accounts.Account, with their business
    quarantine: Callable[[str, float], dict[str, Any] | str]  # tn, hours -> report or error
    release: Callable[[str], dict[str, Any] | str]


_STYLE = """body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2430}
header{background:#1d2430;color:#fff;padding:12px 24px;display:flex;justify-content:space-between}
main{padding:16px 24px}section{background:#fff;border-radius:6px;padding:12px 16px;
margin-bottom:16px;box-shadow:0 1px 2px #0002}table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #e3e6ea;padding:4px 8px;text-align:left;font-size:14px}
.quarantined{color:#c62828;font-weight:600}.at_velocity_limit{color:#ef6c00}
.healthy{color:#2e7d32}button{cursor:pointer}form.inline{display:inline}
.error{color:#c62828}"""


class TrustCenter:
    def __init__(self, auth: AdminAuth, data: PageData) -> None:
        self.auth = auth
        self.data = data

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/ui", self._to_ui)
        app.router.add_get("/ui/", self.page)
        app.router.add_get("/ui/login", self.login_form)
        app.router.add_post("/ui/login", self.login)
        app.router.add_post("/ui/logout", self.logout)
        app.router.add_post("/ui/numbers/{tn}/{action:quarantine|release}", self.change)

    async def _to_ui(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    @staticmethod
    def _html(body: str, status: int = 200) -> web.Response:
        return web.Response(text=body, status=status, content_type="text/html", headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                       "img-src data:; form-action 'self'",
            "X-Frame-Options": "DENY", "Cache-Control": "no-store"})

    def _doc(self, title: str, body: str, csrf: str | None = None) -> str:
        logout = (f'<form class="inline" method="post" action="/ui/logout">'
                  f'<input type="hidden" name="csrf" value="{e(csrf)}">'
                  f'<button>Log out</button></form>') if csrf else ""
        return (f'<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title>'
                f'<style>{_STYLE}</style></head><body><header><b>stirshaken-proxy Trust Center'
                f'</b>{logout}</header><main>{body}</main></body></html>')

    async def login_form(self, request: web.Request, error: str = "") -> web.Response:
        note = f'<p class="error">{e(error)}</p>' if error else ""
        if self.auth.credential is None:
            note = ('<p class="error">No admin credential is configured ([admin] '
                    'password_file): the Trust Center is closed.</p>')
        return self._html(self._doc("Log in", f"""<section><h2>Log in</h2>{note}
<form method="post" action="/ui/login"><p><label>User <input name="user" autocomplete="username">
</label></p><p><label>Password <input name="password" type="password"
autocomplete="current-password"></label></p><p><button id="login">Log in</button></p></form>
</section>"""), status=401 if error else 200)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        address = request.remote or ""
        if self.auth.throttled(address, time.time()):
            answer = await self.login_form(request, "Too many failed logins: wait a minute.")
            answer.set_status(429)
            return answer
        token = self.auth.login(str(form.get("user", "")), str(form.get("password", "")),
                                time.time(), address)
        if token is None:
            return await self.login_form(request, "Wrong user or password.")
        response = web.HTTPSeeOther("/ui/")
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict",
                            path="/", max_age=int(SESSION_SECONDS))
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        csrf = self.auth.session(request, time.time())
        if csrf is not None and hmac.compare_digest(str(form.get("csrf", "")), csrf):
            self.auth.logout(request)
        raise web.HTTPSeeOther("/ui/login")

    async def change(self, request: web.Request) -> web.StreamResponse:
        csrf = self.auth.session(request, time.time())
        if csrf is None:
            raise web.HTTPSeeOther("/ui/login")
        form = await request.post()
        if not hmac.compare_digest(str(form.get("csrf", "")), csrf):
            return self._html(self._doc("Refused", "<p class='error'>The form is stale "
                                        "(CSRF check); reload the page.</p>"), status=403)
        tn = request.match_info["tn"]
        if request.match_info["action"] == "quarantine":
            try:
                hours = float(str(form.get("hours", "24")))
            except ValueError:
                hours = float("nan")
            result = self.data.quarantine(tn, hours)
        else:
            result = self.data.release(tn)
        if isinstance(result, str):
            return self._html(self._doc("Refused", f"<p class='error'>{e(result)}</p>"
                                        "<p><a href='/ui/'>Back</a></p>", csrf), status=400)
        raise web.HTTPSeeOther("/ui/")

    async def page(self, request: web.Request) -> web.Response:
        now = time.time()
        csrf = self.auth.session(request, now)
        if csrf is None:
            raise web.HTTPFound("/ui/login")
        query = request.query.get("q", "").strip()[:64]
        records = await asyncio.to_thread(self.data.records, now - 7 * 86400)
        numbers = self.data.numbers()
        report = build(records, {}, limits=self.data.limits(), since=now - 7 * 86400,
                       until=now)
        total = report.total.as_json()
        rows = []
        for n in numbers:
            state = str(n["state"])
            action = "release" if state == "quarantined" else "quarantine"
            hours = ('<input type="hidden" name="hours" value="24">'
                     if action == "quarantine" else "")
            rows.append(
                f'<tr id="tn-{e(str(n["tn"]))}"><td>{e(str(n["tn"]))}</td>'
                f'<td>{e(str(n.get("account") or ""))}</td>'
                f'<td class="state {e(state)}">{e(state)}</td>'
                f'<td>{n.get("calls_last_hour", 0)}</td>'
                f'<td>{float(n.get("answer_ratio", 0)):.2f}</td>'
                f'<td>{float(n.get("average_duration", 0)):.0f}</td>'
                f'<td>{e(str(n.get("quarantine_reason") or ""))}</td>'
                f'<td><form class="inline" method="post" '
                f'action="/ui/numbers/{e(str(n["tn"]))}/{action}">'
                f'<input type="hidden" name="csrf" value="{e(csrf)}">{hours}'
                f'<button name="do" value="{action}">{action.capitalize()}</button></form>'
                f'</td></tr>')
        certs = "".join(
            f"<tr><td>{e(name)}</td><td>{time.strftime('%Y-%m-%d', time.gmtime(na))}</td>"
            f"<td>{max(0, int((na - now) // 86400))} days</td></tr>"
            for name, na in sorted(self.data.certificates().items()))
        accounts = "".join(
            f"<tr><td>{e(a.name)}</td><td>{e(a.business.legal_name if a.business else '')}</td>"
            f"<td>{e(a.business.ein if a.business else '')}</td>"
            f"<td>{e(a.business.address if a.business else '')}</td>"
            f"<td>{e(a.business.contact if a.business else '')}</td><td>{e(a.brand)}</td></tr>"
            for a in self.data.accounts())
        brands = "".join(
            f"<tr><td>{e(scope)}</td><td>{e(b.name)}</td><td>{e(b.logo)}</td></tr>"
            for scope, b in sorted(self.data.brands().items()))
        shown = [r for r in reversed(records) if not query or query in " ".join(
            str(r.get(k) or "") for k in ("call_id", "orig", "presented", "dest", "account"))]
        recent = "".join(
            f"<tr><td>{time.strftime('%m-%d %H:%M:%S', time.gmtime(r['started']))}</td>"
            f"<td>{e(r['direction'])}</td><td>{e(str(r.get('account') or ''))}</td>"
            f"<td>{e(str(r.get('presented') or ''))}</td><td>{e(str(r.get('dest') or ''))}</td>"
            f"<td>{e(str(r.get('attest') or r.get('verstat') or ''))}</td>"
            f"<td>{r['status']}</td><td>{float(r['duration']):.0f}</td></tr>"
            for r in shown[:100])
        body = f"""
<section><h2>Attestation, last 7 days</h2><p id="mix">{total['calls']} calls,
<b>{total['share_a']:.0%} attested A</b></p><div id="chart">{mix_chart(report.by_day)}</div></section>
<section><h2>Numbers</h2><table id="numbers"><tr><th>number</th><th>account</th><th>state</th>
<th>calls/h</th><th>answer ratio</th><th>avg s</th><th>reason</th><th></th></tr>
{''.join(rows) or '<tr><td colspan="8">No number has calls yet.</td></tr>'}</table></section>
<section><h2>Accounts</h2><table id="accounts"><tr><th>account</th><th>legal name</th>
<th>EIN</th><th>address</th><th>contact</th><th>brand</th></tr>{accounts}</table></section>
<section><h2>Certificates</h2><table id="certificates"><tr><th>identity</th><th>valid until</th>
<th>left</th></tr>{certs}</table></section>
<section><h2>Brands</h2><table id="brands"><tr><th>for</th><th>name</th><th>logo</th></tr>
{brands or '<tr><td colspan="3">none</td></tr>'}</table></section>
<section><h2>Recent calls</h2><form method="get" action="/ui/"><input name="q"
value="{e(query)}" placeholder="number, account or Call-ID"> <button>Search</button></form>
<table id="records"><tr><th>started (UTC)</th><th>direction</th><th>account</th><th>from</th>
<th>to</th><th>attestation</th><th>status</th><th>s</th></tr>{recent}</table></section>"""
        return self._html(self._doc("Trust Center", body, csrf))


__all__ = ["AdminAuth", "AdminCredential", "PageData", "TrustCenter"]
