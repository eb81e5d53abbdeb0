"""SIP digest authentication of dialers with SIPp's own digest support: the right password is
signed A for its account, a wrong one gets 407 again (and, repeated, 403), a replayed answer
is refused; credentials are set with the CLI while the service runs."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stirshaken_proxy.stir.passport import decode_passport
from tests.service.conftest import requires_sipp
from tests.support import (
    HOST,
    Ports,
    SippUas,
    free_port,
    run_uac,
    running_service,
    scrape,
    signing_config,
    write_config,
)

pytestmark = [requires_sipp, pytest.mark.sipp]
REALM = "proxy.test"


def set_credentials(cfg: Path, username: str, password: str, account: str = "demo") -> str:
    done = subprocess.run(
        [sys.executable, "-m", "stirshaken_proxy.cli", "credentials", "set", "--config",
         str(cfg), "--username", username, "--account", account],
        input=password + "\n", capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def auth_uri(ports: Ports) -> tuple[str, str]:
    """SIPp computes the digest over sip:remote_ip:remote_port unless told the Request-URI
    (it adds the "sip:"); the service checks the digest-uri against the Request-URI."""
    return ("-auth_uri", f"12025550199@{HOST}:{ports.dialer}")


def counter(metrics: str, result: str) -> float:
    found = re.search(rf'^stirshaken_digest_auth_total{{result="{result}"}} (\S+)$', metrics,
                      re.M)
    return float(found.group(1)) if found else 0.0


def wrong_attempt(port: int, call_id: str) -> bytes:
    """INVITE, 407, INVITE answering the challenge with a wrong password: the final answer."""
    def request(cseq: int, extra: str = "") -> bytes:
        return (f"INVITE sip:12025550199@{HOST}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {HOST}:{s.getsockname()[1]};branch=z9hG4bK{call_id}{cseq}\r\n"
                f"From: <sip:12025550100@{HOST}>;tag=w\r\nTo: <sip:12025550199@{HOST}>\r\n"
                f"Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nMax-Forwards: 70\r\n{extra}"
                "Content-Length: 0\r\n\r\n").encode()

    def final(data: bytes) -> bytes:
        s.sendto(data, (HOST, port))
        while True:
            got = s.recv(65536)
            if not got.startswith(b"SIP/2.0 1"):
                return got

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        s.settimeout(3)
        challenge = final(request(1))
        nonce = re.search(rb'nonce="([^"]+)"', challenge)
        assert nonce is not None, challenge
        value = (f'Digest username="dialer1", realm="{REALM}", nonce="{nonce.group(1).decode()}", '
                 f'uri="sip:12025550199@{HOST}:{port}", response="{"0" * 32}", algorithm=MD5, '
                 'cnonce="abc", qop=auth, nc=00000001')
        return final(request(2, f"Proxy-Authorization: {value}\r\n")).split(b"\r\n", 1)[0]


def test_digest_with_sipp(tmp_path: Path) -> None:
    ports = Ports.pick()
    extra = signing_config(tmp_path, ports, sources="[]") + f"""
[digest]
realm = "{REALM}"
algorithms = ["MD5", "SHA-256"]  # SIPp 3.6 answers the first challenge and knows only MD5
max_failures = 3
ban_seconds = 60
"""
    cfg = write_config(tmp_path / "proxy.toml", ports, extra=extra, dialer_sources="[]")
    assert "set dialer1 for account demo" in set_credentials(cfg, "dialer1", "right-password")
    uas_port = ports.carrier_next_hop
    with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc, \
            SippUas("uas.xml", uas_port, tmp_path) as uas:
        # The right password: every call is signed A for the account the credentials name.
        ok = run_uac("uac_auth.xml", ports.dialer, free_port(), tmp_path, calls=5, rate=5,
                     extra=(*auth_uri(ports), "-au", "dialer1", "-ap", "right-password", "-trace_msg",
                            "-message_file", str(tmp_path / "uac-msg.log")))
        assert ok.successful == 5, ok.output + svc.log()
        msgs = uas.messages()
        tokens = re.findall(r"^Identity: ([^;\r\n]+)", msgs, re.M)
        assert len(tokens) == 5
        assert {decode_passport(t).claims["attest"] for t in tokens} == {"A"}
        assert "Proxy-Authorization" not in msgs  # meant for us: never forwarded
        assert "Proxy-Authorization" in (tmp_path / "uac-msg.log").read_text()

        # A user added while the service runs is known within the store's refresh.
        set_credentials(cfg, "dialer2", "second-password")
        time.sleep(1.0)
        second = run_uac("uac_auth.xml", ports.dialer, free_port(), tmp_path, calls=1, rate=1,
                         extra=(*auth_uri(ports), "-au", "dialer2", "-ap", "second-password"))
        assert second.successful == 1, second.output

        # A replayed answer (the same credentials, nonce and count, a new branch) is refused.
        sent = (tmp_path / "uac-msg.log").read_text(errors="replace")
        authorized = next(m for m in re.split(r"\n(?=-{10,})", sent)
                          if "INVITE sip:" in m and "Proxy-Authorization" in m)
        request = authorized[authorized.index("INVITE sip:"):].strip("\n").split("\n\n")[0]
        head = request.replace("\r\n", "\n").split("\n")
        replay = "\r\n".join(
            re.sub(r"branch=[^;\s]+", "branch=z9hG4bKreplay1", line) for line in head
            if not line.startswith("Content-Length")) + "\r\nContent-Length: 0\r\n\r\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, 0))
            s.settimeout(3)
            s.sendto(replay.replace("Content-Type: application/sdp\r\n", "").encode(),
                     (HOST, ports.dialer))
            answers = [s.recv(65536).split(b"\r\n", 1)[0] for _ in range(2)]
        assert answers == [b"SIP/2.0 100 Trying", b"SIP/2.0 407 Proxy Authentication Required"]
        assert counter(scrape(ports.admin), "replay") == 1

        # A wrong password gets 407 again (SIPp then waits: the call never completes).
        bad = run_uac("uac_auth.xml", ports.dialer, free_port(), tmp_path, calls=1, rate=1,
                      time_limit=6, extra=(*auth_uri(ports), "-au", "dialer1", "-ap",
                                           "wrong-password", "-trace_msg", "-message_file",
                                           str(tmp_path / "bad-msg.log")))
        assert bad.successful == 0
        trace = (tmp_path / "bad-msg.log").read_text(errors="replace")
        assert re.search(r"SIP/2.0 407 Proxy Authentication Required\r?\n(?:.*\n)*?"
                         r"CSeq: 2 INVITE", trace), trace
        assert counter(scrape(ports.admin), "wrong_password") == 1
        # The replay and the wrong password were two failures from this address; the third
        # (max_failures = 3) gets 403, and so does the right password while the ban lasts.
        assert wrong_attempt(ports.dialer, "ban-1") == \
            b"SIP/2.0 403 Forbidden (authentication failures)"
        banned = run_uac("uac_auth.xml", ports.dialer, free_port(), tmp_path, calls=1, rate=1,
                         time_limit=10,
                         extra=(*auth_uri(ports), "-au", "dialer1", "-ap", "right-password"))
        assert banned.successful == 0 and banned.failed == 1
        assert counter(scrape(ports.admin), "authorized") == 6
        assert counter(scrape(ports.admin), "banned") >= 1


def test_two_workers_count_an_addresss_failures_once(tmp_path: Path) -> None:
    """Wrong passwords in calls owned by one worker, then the other, alternately: the
    address has max_failures tries against the service, not against each worker, and its
    ban holds on both."""
    from stirshaken_proxy.io.workers import owner_of

    ports = Ports.pick()
    extra = signing_config(tmp_path, ports, sources="[]") + f"""
[digest]
realm = "{REALM}"
algorithms = ["MD5"]
max_failures = 4
ban_seconds = 60
"""
    cfg = write_config(tmp_path / "proxy.toml", ports, extra=extra, dialer_sources="[]",
                       transport="workers = 2")
    set_credentials(cfg, "dialer1", "right-password")
    ids = {0: [f"w0-{n}" for n in range(200) if owner_of(f"w0-{n}".encode(), 2) == 0][:4],
           1: [f"w1-{n}" for n in range(200) if owner_of(f"w1-{n}".encode(), 2) == 1][:4]}
    with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc:
        answers = [wrong_attempt(ports.dialer, ids[n % 2][n // 2]) for n in range(4)]
        assert answers == [b"SIP/2.0 407 Proxy Authentication Required"] * 3 + [
            b"SIP/2.0 403 Forbidden (authentication failures)"], answers
        for worker in (0, 1):  # banned on both, whoever owns the call (the other worker
            # hears of the failure over the workers' link: within milliseconds)
            deadline = time.monotonic() + 3
            attempt = 0
            while True:
                attempt += 1
                got = _first_answer(ports.dialer, ids[worker][3], f"b{worker}{attempt}")
                if got.startswith(b"SIP/2.0 403") or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert got.startswith(b"SIP/2.0 403"), got
        assert "Traceback" not in svc.log()


def _first_answer(port: int, call_id: str, branch: str) -> bytes:
    """The final answer to an INVITE without credentials."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        s.settimeout(3)
        s.sendto((f"INVITE sip:12025550199@{HOST}:{port} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP {HOST}:{s.getsockname()[1]};branch=z9hG4bK{branch}\r\n"
                  f"From: <sip:12025550100@{HOST}>;tag=w\r\nTo: <sip:12025550199@{HOST}>\r\n"
                  f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
                  "Content-Length: 0\r\n\r\n").encode(), (HOST, port))
        got = s.recv(65536)
        while got.startswith(b"SIP/2.0 1"):
            got = s.recv(65536)
        return got
