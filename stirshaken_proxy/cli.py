"""The command line: ``stirshaken-proxy run|check-config|...``."""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import engine_core
from .config import AuthConfig, Config, ConfigError, load_config
from .io.progress import MODES, Progress, wanted
from .store import open_store
from .store.base import Store

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_DATA = 4


def _err(text: str) -> None:
    sys.stderr.write(f"stirshaken-proxy: {text}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stirshaken-proxy",
                                     description="STIR/SHAKEN signing and verification proxy")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy in the foreground")
    run.add_argument("--config", required=True, help="TOML configuration file")
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("--config", required=True)

    keys = sub.add_parser("keys", help="key material")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    init = keys_sub.add_parser("init", help="create a development STI-CA and signing certificate")
    init.add_argument("dir", help="directory to write ca.pem, cert.pem, chain.pem, key.pem into")
    init.add_argument("--spc", required=True, help="service provider code for TNAuthList")
    init.add_argument("--days", type=int, default=365, help="certificate validity in days")

    numbers = sub.add_parser("numbers", help="the number inventory")
    num_sub = numbers.add_subparsers(dest="numbers_command", required=True)
    imp = num_sub.add_parser("import", help="import numbers and ranges from a CSV file")
    imp.add_argument("--config", required=True)
    imp.add_argument("csv", help="rows: tn (number or FIRST..LAST), account, label")
    _progress_arg(imp)
    imp.add_argument("--allow-large-ranges", action="store_true",
                     help="accept ranges over [store] max_range_size numbers")
    exp = num_sub.add_parser("export", help="an account's numbers with its business, as the "
                             "analytics engines' registration portals take them")
    exp.add_argument("--config", required=True)
    exp.add_argument("--account", required=True)
    exp.add_argument("--format", choices=("registry", "first-orion"), default="registry",
                     help="registry: every field a registration asks, headed; first-orion: "
                     "number and call purpose, no header, 500 a file")
    exp.add_argument("--out", help="the file to write (default: standard output); "
                     "first-orion past 500 numbers: FILE-001.csv, FILE-002.csv, ...")
    lst = num_sub.add_parser("list", help="list the inventory")
    lst.add_argument("--config", required=True)
    lst.add_argument("--account")
    rm = num_sub.add_parser("remove", help="remove a number or range (ranges are split)")
    rm.add_argument("--config", required=True)
    rm.add_argument("tn", help="a number or FIRST..LAST")

    hl = num_sub.add_parser("health", help="each number's calls, answer ratio, durations, state")
    hl.add_argument("--config", required=True)
    hl.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    for name, text in (("quarantine", "take a number out of rotation (running service)"),
                       ("release", "put a quarantined number back (running service)")):
        q = num_sub.add_parser(name, help=text)
        q.add_argument("--config", required=True)
        q.add_argument("tn")
        if name == "quarantine":
            q.add_argument("--hours", type=float, default=24.0)
            q.add_argument("--reason", default="flagged by operator")

    creds = sub.add_parser("credentials", help="dialers' SIP digest credentials ([digest]), "
                           "stored as HA1 digests")
    creds_sub = creds.add_subparsers(dest="credentials_command", required=True)
    cset = creds_sub.add_parser("set", help="add or change a username's password and account")
    cset.add_argument("--config", required=True)
    cset.add_argument("--username", required=True)
    cset.add_argument("--account", required=True, help="the account its calls are signed as")
    cset.add_argument("--password-file", help="read the password from this file (default: "
                      "the terminal, or one line of standard input)")
    clist = creds_sub.add_parser("list", help="usernames, their accounts and realm")
    clist.add_argument("--config", required=True)
    crm = creds_sub.add_parser("remove", help="remove a username")
    crm.add_argument("--config", required=True)
    crm.add_argument("--username", required=True)
    brands = sub.add_parser("brands", help="Rich Call Data: the name and logo an account's or "
                            "a number's A-attested calls present")
    brands_sub = brands.add_subparsers(dest="brands_command", required=True)
    for name, text in (("set", "set a brand (a logo is fetched now and its digest kept)"),
                       ("remove", "remove a brand"), ("list", "every brand")):
        b = brands_sub.add_parser(name, help=text)
        b.add_argument("--config", required=True)
        if name != "list":
            scope = b.add_mutually_exclusive_group(required=True)
            scope.add_argument("--account", help="the account's brand")
            scope.add_argument("--number", help="one number's own brand (over its account's)")
        if name == "set":
            b.add_argument("--name", required=True, help="the caller name (at most 64)")
            b.add_argument("--logo", help="an https URL of the logo image")
    rep = sub.add_parser("report", help="the attestation audit: mix per account and number, "
                         "numbers at risk, verification failures")
    rep.add_argument("--config", required=True)
    rep.add_argument("--since", default="7d", help="7d, 12h, 30m, or a Unix time (default 7d)")
    rep.add_argument("--account")
    rep.add_argument("--format", choices=("table", "csv", "json", "html"), default="table")
    _progress_arg(rep)
    call = sub.add_parser("call", help="place one test call (UDP, TCP or TLS) and print the "
                          "answers")
    call.add_argument("--target", required=True, help="host:port of the service's listener")
    call.add_argument("--transport", choices=("udp", "tcp", "tls"), default="udp")
    call.add_argument("--from", dest="caller", default="+12025550142")
    call.add_argument("--to", dest="callee", default="+12025550199")
    call.add_argument("--ca-file", help="TLS: the CA the service's certificate chains to")
    call.add_argument("--server-name", help="TLS: the name its certificate must carry")
    call.add_argument("--cert", help="TLS: a client certificate (mutual TLS)")
    call.add_argument("--key", help="TLS: the client certificate's key")
    call.add_argument("--username", help="answer a 407 with these digest credentials")
    call.add_argument("--password-file", help="the password (default: terminal or stdin)")
    call.add_argument("--timeout", type=float, default=10.0)
    api = sub.add_parser("api-key", help="REST API keys (stored hashed in [[accounts]] api_keys)")
    api_sub = api.add_subparsers(dest="api_command", required=True)
    api_sub.add_parser("new", help="make a new random key and print it with its hash")
    hsh = api_sub.add_parser("hash", help="print the hash of a key, for [[accounts]] api_keys")
    hsh.add_argument("key")

    certs = sub.add_parser("certs", help="signing certificates got by ACME (ATIS-1000080)")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    for name, text in (("request", "get a certificate for an identity that has none, or "
                                   "whose renewal is due"),
                       ("renew", "get a new certificate now"),
                       ("status", "each identity's SPC, certificate, x5u and next renewal")):
        c = certs_sub.add_parser(name, help=text)
        c.add_argument("--config", required=True)
        if name == "status":
            c.add_argument("--json", action="store_true", help="JSON lines instead of a table")
        else:
            c.add_argument("--identity", required=True, help="the [[signing]] name")

    ver = sub.add_parser("verify", help="verify an Identity header and show every check")
    ver.add_argument("--config", required=True, help="uses its [verify] trust anchors and policy")
    ver.add_argument("--identity", required=True,
                     help="the Identity header value (token;info=<...>;alg=ES256;ppt=shaken), "
                          "or @FILE to read it from a file")
    ver.add_argument("--from", dest="orig", required=True, help="the calling number")
    ver.add_argument("--to", dest="dest", required=True, help="the called number")
    ver.add_argument("--at", type=float, help="verify as of this Unix time (default: now)")
    return parser


def _progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", choices=MODES, default="auto",
                   help="a progress bar on standard error (auto: on a terminal only)")


def _progress(args: argparse.Namespace, label: str, total: int) -> Progress:
    return Progress(label, total, enabled=wanted(args.progress, sys.stderr))


def cmd_run(args: argparse.Namespace) -> int:
    from .app import run_app
    from .io.logs import setup_logging
    from .store.base import StoreError

    config = load_config(args.config)
    if config.sip_core == "python" and engine_core() == "compiled":
        # The compiled engine was chosen when its modules were imported: the process starts
        # again with the reference (their source).
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
                  {**os.environ, "STIRSHAKEN_CORE": "python"})
    setup_logging(config.log.level, config.log.format)
    _created(config)
    try:
        return run_app(config)
    except StoreError as exc:
        _err(str(exc))
        return EXIT_DATA
    except OSError as exc:
        refused = _bind_refused(exc)
        if refused is None:
            raise
        _err(f"cannot listen: {refused}")
        return EXIT_FAILED


def _bind_refused(exc: OSError) -> str | None:
    """What a listener's failed bind says, with the reason (uvloop's UDP bind keeps the
    errno on its cause); None when the error is not a bind's."""
    cause = exc.__cause__
    code = exc.errno if exc.errno is not None else (
        cause.errno if isinstance(cause, OSError) else None)
    if code not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
        return None
    text = str(exc) if exc.errno is not None else f"{exc}: {os.strerror(code)}"
    if code == errno.EADDRINUSE:
        text += " (is another instance running?)"
    return text


def _created(config: Config) -> None:
    for pki in config.created_keys:
        sys.stderr.write(f"stirshaken-proxy: created development keys: {pki.key} (0600), "
                         f"{pki.cert}, {pki.chain}, STI-CA {pki.ca_cert}\n")


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    _created(config)
    sys.stdout.write(f"{args.config}: ok\n")
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    from .io.keys import KeyFileError, init_dev_pki

    try:
        pki = init_dev_pki(Path(args.dir), spc=args.spc, days=args.days)
    except (FileExistsError, ValueError) as exc:
        _err(f"keys init: {exc}")
        return EXIT_USAGE
    except KeyFileError as exc:
        _err(f"keys init: {exc}")
        return EXIT_DATA
    sys.stdout.write(f"STI-CA root:      {pki.ca_cert}\nsigning cert:     {pki.cert}\n"
                     f"chain (for x5u):  {pki.chain}\nprivate key:      {pki.key} (0600)\n")
    return EXIT_OK


def _auth(config: Config) -> AuthConfig:
    if config.auth is None:
        raise ConfigError(f"{config.path}: no [[accounts]] and [[signing]]: there is no "
                          "inventory to manage")
    return config.auth


def _store(config: Config) -> tuple[Store, AuthConfig]:
    a = _auth(config)
    return open_store(path=a.store_path, url=a.store_url, instance=a.store_instance), a


def _open_store(config: Config) -> tuple[Store, AuthConfig] | None:
    """The store and the accounts, or None after saying why the store cannot be opened."""
    from .store.base import StoreError

    try:
        return _store(config)
    except StoreError as exc:
        _err(str(exc))
        return None


def _known_account(config: Config, auth: AuthConfig, name: str) -> bool:
    """Whether ``--account`` names an account of the config; says so when it does not."""
    if name in {a.name for a in auth.accounts}:
        return True
    known = ", ".join(sorted(a.name for a in auth.accounts))
    _err(f"--account {name!r}: no such account in {config.path} (known: {known})")
    return False


def cmd_numbers(args: argparse.Namespace) -> int:
    from .policy.numbers import NumberFormatError, block_text, parse_block_text
    from .store.base import StoreError, parse_numbers_csv

    config = load_config(args.config)
    if args.numbers_command in ("quarantine", "release"):
        return _admin_post(config, args)
    if args.numbers_command == "health":
        return _health(config, args)
    if args.numbers_command == "export":
        return _export(config, args)
    opened = _open_store(config)
    if opened is None:
        return EXIT_DATA
    store, auth = opened
    try:
        if args.numbers_command == "import":
            path = Path(args.csv)
            try:
                text = path.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as exc:
                _err(f"{path}: cannot read: {exc}")
                return EXIT_DATA
            bar = _progress(args, f"reading {path.name}", text.count("\n"))
            blocks = parse_numbers_csv(str(path), text, on_row=bar.advance,
                                       accounts={a.name for a in auth.accounts},
                                       country_code=auth.policy.country_code,
                                       existing=[*auth.numbers, *store.blocks()],
                                       max_range=None if args.allow_large_ranges
                                       else auth.max_range_size)
            bar.close()
            store.add(blocks, fixed=auth.numbers)
            count = sum(b.size for b in blocks)
            sys.stdout.write(f"imported {len(blocks)} entries ({count} numbers) from {path}\n")
        elif args.numbers_command == "list":
            for b in [*auth.numbers, *store.blocks(args.account)]:
                if args.account and b.account != args.account:
                    continue
                sys.stdout.write(f"{block_text(b)}\t{b.account}\t{b.label}\n")
        else:
            try:
                first, last = parse_block_text(args.tn, country_code=auth.policy.country_code)
            except NumberFormatError as exc:
                _err(str(exc))
                return EXIT_DATA
            removed = store.remove(first, last)
            sys.stdout.write(f"removed {args.tn} (from {len(removed)} entries)\n")
    except StoreError as exc:
        if hasattr(exc, "problems"):
            for problem in exc.problems:
                _err(str(problem))
            _err("nothing was imported")
        else:
            _err(str(exc))
        return EXIT_DATA
    finally:
        store.close()
    return EXIT_OK


def _export(config: Config, args: argparse.Namespace) -> int:
    from .policy import registration
    from .store.base import StoreError

    opened = _open_store(config)
    if opened is None:
        return EXIT_DATA
    store, auth = opened
    try:
        if not _known_account(config, auth, args.account):
            return EXIT_DATA
        account = next(a for a in auth.accounts if a.name == args.account)
        if account.business is None:
            _err(f"{config.path}: [[accounts]] {account.name}: no business (legal_name, ein, "
                 "address, contact): the registrations need it")
            return EXIT_DATA
        numbers = store.load(auth.numbers).numbers_of(account.name, limit=_EXPORT_MAX)
        brands = store.brands()
    except StoreError as exc:
        _err(str(exc))
        return EXIT_DATA
    finally:
        store.close()
    if len(numbers) >= _EXPORT_MAX:
        _err(f"account {account.name} has {_EXPORT_MAX:,} numbers or more: export them in "
             "parts (numbers list --account)")
        return EXIT_DATA
    if args.format == "registry":
        own = brands.get(f"account:{account.name}")
        names = {scope[3:]: b.name for scope, b in brands.items() if scope.startswith("tn:")}
        export = registration.registry(account, numbers, names,
                                       own.name if own is not None else account.brand)
    else:
        export = registration.first_orion(account, numbers)
    if len(export.files) > 1 and not args.out:
        _err(f"{export.rows:,} numbers make {len(export.files)} files of at most "
             f"{registration.FIRST_ORION_MAX_ROWS}: give --out FILE")
        return EXIT_USAGE
    written = []
    try:
        if not args.out:
            sys.stdout.write(export.files[0] if export.files else "")
        elif len(export.files) <= 1:
            Path(args.out).write_text(export.files[0] if export.files else "",
                                      encoding="utf-8", newline="")
            written.append(args.out)
        else:
            out = Path(args.out)
            for i, text in enumerate(export.files, 1):
                part = out.with_name(f"{out.stem}-{i:03d}{out.suffix or '.csv'}")
                part.write_text(text, encoding="utf-8", newline="")
                written.append(str(part))
    except OSError as exc:
        _err(f"{args.out}: cannot write: {exc}")
        return EXIT_DATA
    if export.skipped:
        _err(f"left out {len(export.skipped)} numbers outside North America (+1), which "
             f"these registrations do not take: {', '.join(export.skipped[:5])}"
             + (" ..." if len(export.skipped) > 5 else ""))
    if written:
        where = written[0] if len(written) == 1 else (f"{len(written)} files, {written[0]} "
                                                      f"to {written[-1]}")
        sys.stdout.write(f"wrote {export.rows:,} numbers of {account.name} to {where}\n")
    return EXIT_OK


_EXPORT_MAX = 1_000_000


def _health(config: Config, args: argparse.Namespace) -> int:
    """Each number's statistics and state: the running service's (its admin API), or, when
    it does not answer, what it wrote behind to the store (up to a flush_interval old)."""
    import json
    import time
    import urllib.error
    import urllib.request

    from .policy.health import NumberHealth

    limits = _auth(config).health
    if limits is None:
        raise ConfigError(f"{config.path}: [health] enabled = false")
    try:
        with urllib.request.urlopen(_admin_request(config, "/numbers/health"), timeout=5) as r:
            reports: list[dict[str, object]] = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        opened = _open_store(config)  # the service does not answer: what it wrote behind
        if opened is None:
            return EXIT_DATA
        store, _ = opened
        try:
            health = NumberHealth(limits)
            for tn, data in store.health().load().items():
                health.restore(tn, data)
        finally:
            store.close()
        now = time.time()
        reports = [health.report(tn, now) for tn in sorted(health.numbers)]
    if args.json:
        for r in reports:
            sys.stdout.write(json.dumps(r, separators=(",", ":")) + "\n")
        return EXIT_OK
    sys.stdout.write(f"{'number':<16}{'state':<20}{'calls/h':>8}{'calls':>8}{'ASR':>7}"
                     f"{'ACD s':>8}{'short':>7}  reason\n")
    for r in reports:
        sys.stdout.write(f"{r['tn']!s:<16}{r['state']!s:<20}{r['calls_last_hour']!s:>8}"
                         f"{r['attempts']!s:>8}{float(r['answer_ratio']):>7.2f}"  # type: ignore[arg-type]
                         f"{float(r['average_duration']):>8.0f}{r['short_calls']!s:>7}"  # type: ignore[arg-type]
                         f"  {r['quarantine_reason']}\n")
    return EXIT_OK


def _admin_url(config: Config, path: str) -> str:
    """The running service's admin API (the config's [admin] address)."""
    return f"http://{config.admin.host}:{config.admin.port}{path}"


def _admin_request(config: Config, path: str, method: str = "GET") -> Any:
    """A request to the admin API with the config's admin credential (HTTP Basic), when it
    has one (every endpoint but /healthz, /readyz, /metrics and the certificates needs it)."""
    import base64
    import urllib.request

    headers = {}
    if config.admin.password_file is not None:
        basic = base64.b64encode(f"{config.admin.user}:{config.admin.password}".encode())
        headers["Authorization"] = f"Basic {basic.decode()}"
    return urllib.request.Request(_admin_url(config, path), method=method, headers=headers)


def _admin_post(config: Config, args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    query = {"hours": str(args.hours), "reason": args.reason} \
        if args.numbers_command == "quarantine" else {}
    path = (f"/numbers/{urllib.parse.quote(args.tn)}/{args.numbers_command}?"
            + urllib.parse.urlencode(query))
    if config.admin.password_file is None:
        _err(f"{config.path}: [admin] password_file is not set: the admin API takes no "
             "changes without its credential")
        return EXIT_CONFIG
    request = _admin_request(config, path, "POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            report = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            problem = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            problem = exc.reason
        _err(f"{args.tn}: {problem} (HTTP {exc.code})")
        return EXIT_DATA
    except (urllib.error.URLError, OSError) as exc:
        _err(f"the service's admin API at {config.admin.host}:{config.admin.port} did not "
             f"answer ({exc}); is it running?")
        return EXIT_DATA
    sys.stdout.write(f"{report['tn']}: {report['state']} {report['quarantine_reason']}\n")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    import asyncio
    import time
    from collections import Counter

    from .app import build_verification
    from .sip.numbers import canonical_digits
    from .stats import Stats

    config = load_config(args.config)
    if config.verify is None:
        raise ConfigError(f"{config.path}: no [verify] section (trust anchors, policy)")
    identity = args.identity
    if identity.startswith("@"):
        try:
            identity = Path(identity[1:]).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            _err(f"{identity[1:]}: cannot read: {exc}")
            return EXIT_DATA
    if identity.lower().startswith("identity:"):
        identity = identity.split(":", 1)[1].strip()
    cc = config.verify.policy.country_code
    orig = canonical_digits(args.orig, country_code=cc)
    dest = canonical_digits(args.dest, country_code=cc)
    now = args.at if args.at is not None else time.time()

    async def run() -> int:
        assert config.verify is not None
        feed = build_verification(config.verify, stats=Stats(), counters=Counter())

        def fetching(url: str) -> None:
            sys.stdout.write(f"fetching {url}\n")

        try:
            verdict = await feed.verify(
                [identity], orig=orig, dest=dest, date=None, now=now,
                on_fetch=fetching)
        finally:
            if feed.fetcher is not None:
                await feed.fetcher.close()
        for n, result in enumerate(verdict.results, 1):
            sys.stdout.write(f"Identity #{n} (ppt {result.ppt or '?'})\n")
            for check in result.checks:
                mark = "ok  " if check.ok else "FAIL"
                sys.stdout.write(f"  {mark}  {check.name:<11s} {check.detail}\n")
            if result.rcd is not None or result.rcd_problem:
                rcd = result.rcd_verified
                if rcd is not None:
                    shown = f"name {rcd.name!r}" + (f", logo {rcd.logo}" if rcd.logo else "") \
                        + (f", reason {rcd.reason!r}" if rcd.reason else "")
                    sys.stdout.write(f"  ok    {'rcd':<11s} {shown}\n")
                else:
                    sys.stdout.write(f"  FAIL  {'rcd':<11s} "
                                     f"{result.rcd_problem or 'not verified'}\n")
        outcome = verdict.verstat.value
        if verdict.code is not None:
            outcome += f" ({verdict.code} {verdict.phrase}: {verdict.reason})"
        elif verdict.attest:
            outcome += f" (attestation {verdict.attest})"
        sys.stdout.write(f"verdict: {outcome}\n")
        return EXIT_OK if verdict.code is None else EXIT_FAILED

    return asyncio.run(run())


def _time(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def cmd_certs(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import time

    from .io.acme import CertificateRequestError, obtain
    from .stir.acme import renewal_time

    config = load_config(args.config, pending_ok=True)
    identities = config.auth.signing if config.auth is not None else ()
    acme = config.acme

    def next_renewal(s: Any) -> float | None:
        if not s.acme or acme is None:
            return None
        info = s.cert_info
        return renewal_time(info.not_before, info.not_after, acme.renew_before) if info else 0.0

    if args.certs_command == "status":
        for s in identities:
            info = s.cert_info
            due = next_renewal(s)
            row = {"identity": s.name, "spc": s.spc or None, "acme": s.acme,
                   "serial": info.serial if info else None,
                   "not_after": info.not_after if info else None, "x5u": s.x5u,
                   "next_renewal": due}
            if args.json:
                sys.stdout.write(json.dumps(row) + "\n")
                continue
            renew = ("not by ACME (install new files, then SIGHUP)" if due is None
                     else "now (no certificate)" if info is None
                     else "now (due)" if due <= time.time() else _time(due))
            sys.stdout.write(
                f"{s.name}: SPC {s.spc or '-'}, "
                + (f"certificate {info.serial} valid until {_time(info.not_after)}"
                   if info else "no certificate")
                + f"\n  x5u {s.x5u}\n  next renewal: {renew}\n")
        return EXIT_OK
    found = next((s for s in identities if s.name == args.identity), None)
    if found is None:
        known = ", ".join(s.name for s in identities) or "none"
        _err(f"certs {args.certs_command}: no [[signing]] named {args.identity!r} "
             f"(known: {known})")
        return EXIT_USAGE
    if not found.acme or acme is None:
        _err(f"certs {args.certs_command}: [[signing]] {found.name} does not have acme = true")
        return EXIT_USAGE
    due = next_renewal(found)
    if args.certs_command == "request" and found.cert_info is not None and due is not None \
            and due > time.time():
        sys.stdout.write(f"{found.name}: certificate {found.cert_info.serial} is valid until "
                         f"{_time(found.cert_info.not_after)}, renewal due {_time(due)} "
                         "(certs renew gets a new one now)\n")
        return EXIT_OK
    try:
        got = asyncio.run(obtain(found, acme))
    except CertificateRequestError as exc:
        _err(f"certs {args.certs_command}: {found.name}: {exc}; nothing was installed")
        return EXIT_FAILED
    info = got.certificate
    sys.stdout.write(
        f"{found.name}: certificate {info.serial} for SPC {', '.join(info.spcs)}, valid until "
        f"{_time(info.not_after)}\n  installed: {found.key_path} (0600), {found.certificate}, "
        f"{found.chain}\n  x5u: {got.x5u}\n"
        + (f"  published: {got.published}\n" if got.published else "")
        + "  a running service takes it at its next check ([acme] check_interval), or now "
          "on SIGHUP\n")
    return EXIT_OK


_USERNAME = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%@-]{1,64}\Z")


def cmd_credentials(args: argparse.Namespace) -> int:
    from .policy.digest import Credential
    from .store.base import StoreError

    config = load_config(args.config)
    if config.digest is None:
        _err(f"{config.path}: no [digest] section: digest authentication is off")
        return EXIT_CONFIG
    opened = _open_store(config)
    if opened is None:
        return EXIT_DATA
    store, auth = opened
    realm = config.digest.realm
    try:
        if args.credentials_command == "list":
            for c in store.credentials():
                note = "" if c.realm == realm else f"\t(realm {c.realm}: set it again)"
                sys.stdout.write(f"{c.username}\t{c.account}{note}\n")
            return EXIT_OK
        if not _USERNAME.match(args.username):
            _err(f"username {args.username!r}: 1 to 64 characters of letters, digits and "
                 "-._~!$&'()*+,;=%@")
            return EXIT_DATA
        if args.credentials_command == "remove":
            if not store.remove_credential(args.username):
                _err(f"no credentials for {args.username!r}")
                return EXIT_DATA
            sys.stdout.write(f"removed {args.username}\n")
            return EXIT_OK
        if not _known_account(config, auth, args.account):
            return EXIT_DATA
        password = _read_password(args.password_file)
        if password is None:
            return EXIT_DATA
        store.set_credential(Credential.from_password(
            username=args.username, account=args.account, realm=realm, password=password))
        sys.stdout.write(f"set {args.username} for account {args.account} (realm {realm})\n")
        return EXIT_OK
    except StoreError as exc:
        _err(str(exc))
        return EXIT_DATA
    finally:
        store.close()


def _read_password(path: str | None) -> str | None:
    """A password from a file (its first line), the terminal, or standard input."""
    import getpass

    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            _err(f"{path}: cannot read: {exc}")
            return None
        password = text.splitlines()[0] if text else ""
    elif sys.stdin.isatty():
        password = getpass.getpass("password: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        _err("the password must have at least 8 characters")
        return None
    return password


def cmd_brands(args: argparse.Namespace) -> int:
    import asyncio

    from .policy.numbers import NumberFormatError, parse_block_text
    from .stir.rcd import Brand, RcdError, check_logo_url, check_name, integrity
    from .store.base import StoreError

    config = load_config(args.config)
    opened = _open_store(config)
    if opened is None:
        return EXIT_DATA
    store, auth = opened
    try:
        if args.brands_command == "list":
            configured = {f"account:{a.name}": a.brand for a in auth.accounts if a.brand}
            stored = store.brands()
            for scope in sorted(set(configured) | set(stored)):
                b = stored.get(scope)
                origin = "store" if b is not None else "config"
                name = b.name if b is not None else configured[scope]
                logo = f"\t{b.logo}" if b is not None and b.logo else ""
                sys.stdout.write(f"{scope}\t{name}\t({origin}){logo}\n")
            return EXIT_OK
        if args.account is not None:
            if not _known_account(config, auth, args.account):
                return EXIT_DATA
            scope = f"account:{args.account}"
        else:
            try:
                first, last = parse_block_text(args.number,
                                               country_code=auth.policy.country_code)
            except NumberFormatError as exc:
                _err(str(exc))
                return EXIT_DATA
            if first != last:
                _err(f"--number {args.number!r}: one number, not a range")
                return EXIT_DATA
            scope = f"tn:{first}"
        if args.brands_command == "remove":
            if not store.remove_brand(scope):
                _err(f"no brand for {scope}")
                return EXIT_DATA
            sys.stdout.write(f"removed the brand of {scope}\n")
            return EXIT_OK
        owner = args.account
        if owner is None:
            owner = store.load(auth.numbers).owner(scope[3:])
            if owner is None:
                _err(f"--number {args.number!r}: not in the inventory")
                return EXIT_DATA
        business = next((a.business for a in auth.accounts if a.name == owner), None)
        try:
            name = check_name(args.name)
            problem = business.brand_problem(name) if business is not None else None
            if problem is not None:
                raise RcdError(f"{problem}; account {owner}")
            logo, digest = "", ""
            if args.logo:
                logo = check_logo_url(args.logo)
                body = asyncio.run(_fetch_logo(config, logo))
                digest = integrity(body)
        except RcdError as exc:
            _err(str(exc))
            return EXIT_DATA
        store.set_brand(scope, Brand(name=name, logo=logo, logo_digest=digest))
        sys.stdout.write(f"set the brand of {scope}: {name}"
                         + (f", logo {logo} ({digest})" if logo else "") + "\n")
        return EXIT_OK
    except StoreError as exc:
        _err(str(exc))
        return EXIT_DATA
    finally:
        store.close()


async def _fetch_logo(config: Config, url: str) -> bytes:
    """The logo's bytes, fetched as the verifier fetches x5u: the [verify] URL rules and SSRF
    guard, its size and time limits; raises RcdError saying why not."""
    from collections import Counter

    import aiohttp

    from .io.fetcher import Fetcher, GuardError, tls_context
    from .stir.rcd import RcdError
    from .stir.x5u import FetchLimits, UrlPolicy

    vc = config.verify
    policy = vc.url_policy if vc is not None else UrlPolicy()
    limits = vc.fetch if vc is not None else FetchLimits()
    ctx = tls_context(vc.tls_ca_file if vc is not None else None)
    fetcher = Fetcher(policy=policy, crl_policy=policy, limits=limits, ssl_context=ctx,
                      on_done=lambda *_: None, counters=Counter())
    try:
        body, headers = await fetcher.get(url)
    except GuardError as exc:
        raise RcdError(f"logo {url}: {exc}") from None
    except TimeoutError:
        raise RcdError(f"logo {url}: no answer within {limits.timeout:g} s") from None
    except (aiohttp.ClientError, OSError) as exc:  # ssl.SSLError is an OSError
        raise RcdError(f"logo {url}: cannot be fetched: {exc}") from None
    finally:
        await fetcher.close()
    kind = headers.get("Content-Type", "")
    if not body or (kind and not kind.lower().startswith("image/")):
        raise RcdError(f"logo {url}: not an image (Content-Type {kind or 'none'}, "
                       f"{len(body)} bytes)")
    return body


def cmd_report(args: argparse.Namespace) -> int:
    import time

    from .policy.health import HealthLimits, NumberHealth
    from .policy.report import RENDER, build, parse_since
    from .store.base import StoreError

    config = load_config(args.config)
    now = time.time()
    try:
        since = parse_since(args.since, now)
    except ValueError:
        _err(f"--since {args.since!r}: give 7d, 12h, 30m or a Unix time")
        return EXIT_DATA
    opened = _open_store(config)
    if opened is None:
        return EXIT_DATA
    store, auth = opened
    if args.account is not None and not _known_account(config, auth, args.account):
        return EXIT_DATA
    try:
        limits = auth.health or HealthLimits()
        health = NumberHealth(limits)
        for tn, data in store.health().load().items():
            health.restore(tn, data)
        owned = None
        if args.account is not None:
            inventory = store.load(auth.numbers)
            owned = {tn for tn in health.numbers if inventory.owner(tn) == args.account}
        reports = {tn: health.report(tn, now) for tn in health.numbers}
        bar = _progress(args, "call records", store.count_records(since, now, args.account))
        report = build(bar.iterate(store.records(since, now, account=args.account)), reports,
                       limits=limits, since=since, until=now, account=args.account,
                       owned=owned)
    except StoreError as exc:
        _err(str(exc))
        return EXIT_DATA
    finally:
        store.close()
    sys.stdout.write(RENDER[args.format](report))
    return EXIT_OK


def cmd_call(args: argparse.Namespace) -> int:
    from .io.testcall import CallError, CallPlan, parse_target, place_call

    try:
        host, port = parse_target(args.target)
        password = None
        if args.username:
            password = _read_password(args.password_file)
            if password is None:
                return EXIT_DATA
        plan = CallPlan(host=host, port=port, transport=args.transport, caller=args.caller,
                        callee=args.callee, ca_file=args.ca_file, cert=args.cert,
                        key=args.key, server_name=args.server_name, username=args.username,
                        password=password, timeout=args.timeout)
        status = place_call(plan, lambda line: sys.stdout.write(line + "\n"))
    except CallError as exc:
        _err(str(exc))
        return EXIT_DATA
    return EXIT_OK if 200 <= status < 300 else EXIT_DATA


def cmd_api_key(args: argparse.Namespace) -> int:
    import secrets

    from .io.rest import key_hash

    if args.api_command == "new":
        key = secrets.token_urlsafe(32)
        sys.stdout.write(f"key:  {key}\nhash: {key_hash(key)}   (for [[accounts]] api_keys; "
                         "the key itself is shown only now)\n")
    else:
        sys.stdout.write(key_hash(args.key) + "\n")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "check-config": cmd_check_config, "keys": cmd_keys,
            "numbers": cmd_numbers, "verify": cmd_verify, "api-key": cmd_api_key,
            "credentials": cmd_credentials, "call": cmd_call, "brands": cmd_brands,
            "report": cmd_report,
            "certs": cmd_certs}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
