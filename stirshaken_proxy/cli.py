"""The command line: ``stirshaken-proxy run|check-config|...``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import AuthConfig, Config, ConfigError, load_config
from .store.sqlite import NumberStore

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

    api = sub.add_parser("api-key", help="REST API keys (stored hashed in [[accounts]] api_keys)")
    api_sub = api.add_subparsers(dest="api_command", required=True)
    api_sub.add_parser("new", help="make a new random key and print it with its hash")
    hsh = api_sub.add_parser("hash", help="print the hash of a key, for [[accounts]] api_keys")
    hsh.add_argument("key")

    ver = sub.add_parser("verify", help="verify an Identity header and show every check")
    ver.add_argument("--config", required=True, help="uses its [verify] trust anchors and policy")
    ver.add_argument("--identity", required=True,
                     help="the Identity header value (token;info=<...>;alg=ES256;ppt=shaken), "
                          "or @FILE to read it from a file")
    ver.add_argument("--from", dest="orig", required=True, help="the calling number")
    ver.add_argument("--to", dest="dest", required=True, help="the called number")
    ver.add_argument("--at", type=float, help="verify as of this Unix time (default: now)")
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from .app import run_app
    from .io.logs import setup_logging

    config = load_config(args.config)
    setup_logging(config.log.level, config.log.format)
    _created(config)
    return run_app(config)


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


def _store(config: Config) -> tuple[NumberStore, AuthConfig]:
    if config.auth is None:
        raise ConfigError(f"{config.path}: no [[accounts]] and [[signing]]: there is no "
                          "inventory to manage")
    return NumberStore(config.auth.store_path), config.auth


def cmd_numbers(args: argparse.Namespace) -> int:
    from .policy.numbers import NumberFormatError, block_text, parse_block_text
    from .store.sqlite import StoreError, parse_numbers_csv

    config = load_config(args.config)
    if args.numbers_command in ("quarantine", "release"):
        return _admin_post(config, args)
    if args.numbers_command == "health":
        return _health(config, args)
    try:
        store, auth = _store(config)
    except StoreError as exc:
        _err(str(exc))
        return EXIT_DATA
    try:
        if args.numbers_command == "import":
            path = Path(args.csv)
            try:
                text = path.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as exc:
                _err(f"{path}: cannot read: {exc}")
                return EXIT_DATA
            blocks = parse_numbers_csv(str(path), text,
                                       accounts={a.name for a in auth.accounts},
                                       country_code=auth.policy.country_code,
                                       existing=[*auth.numbers, *store.blocks()])
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


def _health(config: Config, args: argparse.Namespace) -> int:
    """The statistics the service writes behind to the store, with each number's state."""
    import json
    import time

    from .policy.health import NumberHealth
    from .store.sqlite import HealthRows

    store, auth = _store(config)
    try:
        if auth.health is None:
            raise ConfigError(f"{config.path}: [health] enabled = false")
        health = NumberHealth(auth.health)
        for tn, data in HealthRows(store).load().items():
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


def _admin_post(config: Config, args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    query = {"hours": str(args.hours), "reason": args.reason} \
        if args.numbers_command == "quarantine" else {}
    url = (f"http://{config.admin.host}:{config.admin.port}/numbers/"
           f"{urllib.parse.quote(args.tn)}/{args.numbers_command}?"
           + urllib.parse.urlencode(query))
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"),
                                    timeout=5) as r:
            report = json.loads(r.read())
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
        outcome = verdict.verstat.value
        if verdict.code is not None:
            outcome += f" ({verdict.code} {verdict.phrase}: {verdict.reason})"
        elif verdict.attest:
            outcome += f" (attestation {verdict.attest})"
        sys.stdout.write(f"verdict: {outcome}\n")
        return EXIT_OK if verdict.code is None else EXIT_FAILED

    return asyncio.run(run())


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
            "numbers": cmd_numbers, "verify": cmd_verify, "api-key": cmd_api_key}


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
