"""The verification procedure of RFC 8224 §6.2 for SHAKEN (ATIS-1000074 §5.3), pure.

Each Identity header gets its own result, with every check it went through. ``Checks`` does
everything that needs no credential, then the credential checks once the chain is known;
``stir.verification`` holds the cache and asks for fetches.

Response codes (RFC 8224 §6.2.2; where the RFC leaves room, the choice deployed verifiers make):
  438 Invalid Identity Header  malformed header or PASSporT, unsupported ppt, claims that do
                               not match the request, x5u differing from info, bad signature
  437 Unsupported Credential   alg other than ES256, a certificate that is untrusted, expired
                               or not yet valid at iat, revoked, or without TNAuthList
  436 Bad Identity Info        the info URL is not allowed or cannot be fetched
  403 Stale Date               iat (or, without iat, Date) outside the freshness window
  428 Use Identity Header      no Identity header at all (when policy requires one)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ..sip.numbers import canonical_digits
from ..sip.uri import split_values
from .credentials import Credential, FetchFailure
from .passport import PassportError, decode_passport
from .rcd import RcdClaims, RcdError, parse_claims
from .x5u import UrlPolicy


class Verstat(enum.Enum):
    """3GPP TS 24.229 verstat values."""

    PASSED = "TN-Validation-Passed"
    FAILED = "TN-Validation-Failed"
    NONE = "No-TN-Validation"


PHRASES = {403: "Stale Date", 428: "Use Identity Header", 436: "Bad Identity Info",
           437: "Unsupported Credential", 438: "Invalid Identity Header"}


@dataclass(frozen=True, kw_only=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass(kw_only=True)
class HeaderResult:
    """The outcome for one Identity header: ``code`` is None when it passed."""

    raw: str
    checks: list[Check] = field(default_factory=list)
    code: int | None = None
    reason: str = ""
    ppt: str | None = None
    attest: str | None = None
    origid: str | None = None
    url: str | None = None
    _passport: Any = None
    div_tn: str | None = None  # ppt=div: the number the call was diverted from
    via: HeaderResult | None = None  # shaken: its dest was matched through this div header
    rcd: RcdClaims | None = None  # the Rich Call Data claims, well formed
    rcd_problem: str = ""  # why they are not (or why their content does not match)
    rcd_checked: bool = False  # the content rcdi points to was fetched and matches

    @property
    def passed(self) -> bool:
        return self.code is None and bool(self.checks) and all(c.ok for c in self.checks) \
            and (self.via is None or self.via.passed)

    @property
    def rcd_verified(self) -> RcdClaims | None:
        """The rcd claims of a header that passed, with their referenced content checked."""
        rcd = self.rcd
        if rcd is None or self.rcd_problem or not self.passed:
            return None
        return rcd if (not rcd.logo or self.rcd_checked) else None

    def fail(self, name: str, code: int, detail: str) -> HeaderResult:
        self.checks.append(Check(name=name, ok=False, detail=detail))
        self.code = code
        self.reason = detail
        return self

    def ok(self, name: str, detail: str = "") -> None:
        self.checks.append(Check(name=name, ok=True, detail=detail))


@dataclass(kw_only=True)
class Verdict:
    verstat: Verstat
    results: list[HeaderResult]
    code: int | None = None  # the response code when the request is to be rejected
    reason: str = ""
    attest: str | None = None
    rcd: RcdClaims | None = None  # the verified caller's Rich Call Data, when there is one

    @property
    def phrase(self) -> str:
        return PHRASES.get(self.code or 0, "")


@dataclass(frozen=True, kw_only=True)
class IdentityHeader:
    token: str
    info: str | None
    alg: str | None
    ppt: str | None


def parse_identity(value: str) -> IdentityHeader:
    """``token;info=<url>;alg=ES256;ppt=shaken`` (RFC 8224 §4.1); raises ValueError."""
    token, _, rest = value.strip().partition(";")
    token = token.strip()
    if not token:
        raise ValueError("empty Identity header")
    params: dict[str, str] = {}
    if rest:
        for part in split_values(rest, ";"):
            if not part:
                continue
            name, eq, val = part.partition("=")
            name = name.strip().lower()
            if not name or not eq:
                raise ValueError(f"malformed parameter {part.strip()!r}")
            params[name] = val.strip()
    info = params.get("info")
    if info is not None:
        if not (info.startswith("<") and info.endswith(">")):
            raise ValueError("info parameter is not <URI>")
        info = info[1:-1]
    ppt = params.get("ppt")
    if ppt is not None and len(ppt) >= 2 and ppt[0] == ppt[-1] == '"':
        ppt = ppt[1:-1]  # carriers send it bare; quoted is accepted too
    return IdentityHeader(token=token, info=info, alg=params.get("alg"), ppt=ppt)


def _ppt_of(value: str) -> str | None:
    """The ppt parameter of an Identity value (None: none, or not a header at all)."""
    try:
        return parse_identity(value).ppt
    except ValueError:
        return None


class Checks:
    """The checks of one Identity header, with the verifier's settings."""

    def __init__(self, *, url_policy: UrlPolicy, window: int = 60,
                 country_code: str = "1") -> None:
        self.url_policy = url_policy
        self.window = window
        self.country_code = country_code

    def precheck_all(self, identities: list[str], *, orig: str | None, dest: str | None,
                     date: int | None, now: float) -> list[HeaderResult]:
        """Each Identity value (a header may hold several, comma-separated) checked as far as
        it goes without its credential."""
        values: list[str] = []
        for v in identities:
            values.extend(split_values(v) if "," in v else [v])
        if len(values) == 1:
            return [self.precheck(values[0], orig=orig, dest=dest, date=date, now=now)]
        # div headers first (RFC 8946): a shaken PASSporT of a diverted call names the
        # number first called, which a div header links to this request's.
        results: list[HeaderResult | None] = [None] * len(values)
        diverted: dict[str, HeaderResult] = {}
        for i, value in enumerate(values):
            if _ppt_of(value) == "div":
                r = self.precheck(value, orig=orig, dest=dest, date=date, now=now)
                results[i] = r
                if r.code is None and r.div_tn is not None:
                    diverted.setdefault(r.div_tn, r)
        for i, value in enumerate(values):
            if results[i] is None:
                results[i] = self.precheck(value, orig=orig, dest=dest, date=date, now=now,
                                           diverted=diverted)
        return [r for r in results if r is not None]

    @staticmethod
    def verdict(results: list[HeaderResult]) -> Verdict:
        """One passing SHAKEN header is enough; else the first failure's code."""
        if not results:
            return Verdict(verstat=Verstat.NONE, results=[], code=428,
                           reason="no Identity header")
        passed = [r for r in results if r.passed and r.ppt == "shaken"]
        if passed:
            # The caller's Rich Call Data: in the SHAKEN PASSporT, else a passing rcd one.
            rcd = passed[0].rcd_verified or next(
                (r.rcd_verified for r in results if r.ppt == "rcd" and r.rcd_verified), None)
            return Verdict(verstat=Verstat.PASSED, results=results, attest=passed[0].attest,
                           rcd=rcd)
        first = next((r for r in results if r.code is not None), None)
        if first is None:  # only div or rcd PASSporTs, valid, but no SHAKEN one
            return Verdict(verstat=Verstat.FAILED, results=results, code=438,
                           reason="no SHAKEN PASSporT")
        return Verdict(verstat=Verstat.FAILED, results=results, code=first.code,
                       reason=first.reason)

    def precheck(self, value: str, *, orig: str | None, dest: str | None, date: int | None,
                 now: float, diverted: dict[str, HeaderResult] | None = None) -> HeaderResult:
        r = HeaderResult(raw=value)
        try:
            header = parse_identity(value)
        except ValueError as exc:
            return r.fail("syntax", 438, f"malformed Identity header: {exc}")
        try:
            passport = decode_passport(header.token)
        except PassportError as exc:
            return r.fail("syntax", 438, exc.reason)
        r.ok("syntax")
        ph = passport.header
        ppt = header.ppt if header.ppt is not None else ph.get("ppt")
        r.ppt = ppt if isinstance(ppt, str) else None
        if ppt not in ("shaken", "div", "rcd") or ph.get("ppt") != ppt:
            return r.fail("ppt", 438, f"unsupported PASSporT type {ppt!r} "
                          "(shaken, div or rcd)")
        if ph.get("typ") != "passport":
            return r.fail("ppt", 438, f"typ is {ph.get('typ')!r}, not passport")
        r.ok("ppt", ppt)
        alg = header.alg if header.alg is not None else ph.get("alg")
        if alg != "ES256" or ph.get("alg") != "ES256":
            return r.fail("alg", 437, f"unsupported algorithm {ph.get('alg')!r} "
                          f"(header {header.alg!r}); only ES256")
        r.ok("alg", "ES256")
        claims = passport.claims
        attest = claims.get("attest")
        origid = claims.get("origid")
        orig_claim = claims.get("orig")
        dest_claim = claims.get("dest")
        iat = claims.get("iat")
        if ppt == "div":
            div = claims.get("div")
            div_tn = div.get("tn") if isinstance(div, dict) else None
            if not isinstance(div_tn, str):
                return r.fail("claims", 438, "div has no tn")
            r.div_tn = canonical_digits(div_tn, country_code=self.country_code)
        elif ppt == "rcd":
            if not isinstance(claims.get("rcd"), dict):
                return r.fail("claims", 438, "an rcd PASSporT without rcd")
        elif attest not in ("A", "B", "C") or not isinstance(origid, str) or not origid:
            return r.fail("claims", 438, "attest must be A, B or C and origid present")
        if not isinstance(orig_claim, dict) or not isinstance(orig_claim.get("tn"), str):
            return r.fail("claims", 438, "orig has no tn")
        tns = dest_claim.get("tn") if isinstance(dest_claim, dict) else None
        if not isinstance(tns, list) or not tns or not all(isinstance(t, str) for t in tns):
            return r.fail("claims", 438, "dest has no tn array")
        if isinstance(iat, bool) or not isinstance(iat, int):
            return r.fail("claims", 438, "iat is not an integer")
        if ppt == "div":
            r.ok("claims", f"diverted from {r.div_tn}")
        elif ppt == "rcd":  # RFC 9795: Rich Call Data signed apart from the SHAKEN PASSporT
            try:
                r.rcd = parse_claims(claims)
            except RcdError as exc:
                return r.fail("claims", 438, f"rcd: {exc}")
            r.ok("claims", "rich call data")
        else:
            r.attest = attest
            r.origid = origid
            r.ok("claims", f"attest {attest}, origid {origid}")
            try:
                r.rcd = parse_claims(claims)
            except RcdError as exc:
                r.rcd_problem = str(exc)
        x5u = ph.get("x5u")
        info = header.info
        if info is None:  # RFC 8224 §4.1: info is mandatory (no falling back on x5u)
            return r.fail("x5u", 438, "Identity header has no info parameter")
        if not isinstance(x5u, str) or not x5u:
            return r.fail("x5u", 438, "PASSporT header has no x5u")
        if info != x5u:
            return r.fail("x5u", 438, f"info {info!r} differs from x5u {x5u!r}")
        problem = self.url_policy.check_url(x5u)
        if problem is not None:
            return r.fail("x5u", 436, f"x5u {x5u}: {problem}")
        r.url = x5u
        r.ok("x5u", x5u)
        cc = self.country_code
        claimed_orig = canonical_digits(orig_claim["tn"], country_code=cc)
        if orig is None or claimed_orig != orig:
            return r.fail("orig", 438, f"orig {orig_claim['tn']!r} does not match the "
                          f"calling number {orig!r}")
        r.ok("orig", orig)
        claimed_dest = {canonical_digits(t, country_code=cc) for t in tns}
        link = next((d for tn, d in (diverted or {}).items() if tn in claimed_dest), None) \
            if dest not in claimed_dest else None
        if dest is None or (dest not in claimed_dest and link is None):
            return r.fail("dest", 438, f"dest {tns!r} does not include the called number "
                          f"{dest!r}")
        if link is not None:
            r.via = link
            r.ok("dest", f"{dest} through the diversion from {link.div_tn}")
        else:
            r.ok("dest", dest)
        # RFC 8224 §6.2 step 4: iat is authoritative; Date only matters when iat is stale.
        age = now - iat
        if iat <= 0 or abs(age) > self.window:
            when = "in the future" if age < 0 else "old"
            return r.fail("iat", 403, f"iat {iat} is {abs(int(age))} s {when} "
                          f"(window {self.window} s)")
        date_note = "" if date is None else f", Date {int(now - date)} s old"
        r.ok("iat", f"{int(age)} s old{date_note}")
        r._passport = passport
        return r

    @staticmethod
    def with_credential(r: HeaderResult, cred: Credential | FetchFailure) -> None:
        if isinstance(cred, FetchFailure):
            r.fail("credential", 436, f"cannot fetch {cred.url}: {cred.reason}")
            return
        if cred.error is not None or cred.public_key is None:
            r.fail("credential", 437, cred.error or "unusable credential")
            return
        iat = r._passport.claims["iat"]
        if iat < cred.not_before:
            r.fail("credential", 437, "certificate not yet valid at iat")
            return
        if iat > cred.not_after:
            r.fail("credential", 437, "certificate expired at iat")
            return
        r.ok("credential", f"{cred.subject}, SPC {', '.join(cred.spcs)}")
        if not r._passport.verify(cred.public_key):
            r.fail("signature", 438, "ES256 signature does not verify")
            return
        r.ok("signature")
