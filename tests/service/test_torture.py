"""The 49 RFC 4475 messages against the running service over UDP and TCP (chunked at random),
then a normal call. Each is forwarded, answered with the RFC's code, or dropped, as
tests/data/rfc4475/INDEX.md says."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from tests.service.conftest import requires_sipp
from tests.support import (
    HOST,
    Ports,
    SippUas,
    free_port,
    run_uac,
    running_service,
    write_config,
)

pytestmark = [requires_sipp, pytest.mark.sipp]
DATA = Path(__file__).resolve().parent.parent / "data" / "rfc4475"

ANSWER = {
    **dict.fromkeys(["badinv01", "clerr", "ncl", "scalar02", "quotbal", "ltgtruri", "lwsruri",
                     "lwsstart", "trws", "escruri", "regbadct", "badaspec", "baddn",
                     "mismatch01", "mismatch02", "insuf", "multi01", "mcl01"], 400),
    "badvers": 505, "zeromf": 483, "unkscm": 416, "novelsc": 416, "bext01": 420,
}
DROP = {"scalarlg", "bigcode", "bcast", "unreason", "noreason"}  # responses matching nothing
FORWARD = {p.stem for p in DATA.glob("*.dat")} - set(ANSWER) - DROP
# Over TCP, framing decides first (RFC 4475 §3.1.2.2/3, §3.3.9): these close or wait instead.
TCP_NO_ANSWER = {"clerr", "ncl", "mcl01", "baddn", "inv2543"}


def _call_id(data: bytes) -> bytes | None:
    """The Call-ID line of a message (long or compact form), to tell its forward apart."""
    for line in data.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"call-id", b"i") and value.strip():
            return value.strip()
    return None


def final_status(replies: list[bytes]) -> int | None:
    finals = [int(r[8:11]) for r in replies if r.startswith(b"SIP/2.0 ") and r[8:9] != b"1"]
    return finals[0] if finals else None


def drain(sock: socket.socket, seconds: float) -> list[bytes]:
    out: list[bytes] = []
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(65535)
            if not data:  # the peer closed the connection
                break
            out.append(data)
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def test_torture_messages_udp_and_tcp_then_a_call(tmp_path: Path) -> None:
    ports = Ports.pick()
    cfg = write_config(tmp_path / "p.toml", ports)
    names = sorted(p.stem for p in DATA.glob("*.dat"))
    assert len(names) == 49
    rnd = random.Random(4475)
    problems: list[tuple[str, str, object]] = []
    with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as carrier:
        carrier.bind((HOST, ports.carrier_next_hop))
        for name in names:
            data = (DATA / f"{name}.dat").read_bytes()
            # UDP: one datagram.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind((HOST, 0))
                udp.sendto(data, (HOST, ports.dialer))
                replies = drain(udp, 0.25)
            call_id = _call_id(data)
            forwarded = [f for f in drain(carrier, 0.05) if call_id and call_id in f]
            status = final_status(replies)
            if name in ANSWER and status != ANSWER[name]:
                problems.append((name, "udp", status))
            if name in FORWARD and not forwarded:
                problems.append((name, "udp", "not forwarded"))
            if name in DROP and (replies or forwarded):
                problems.append((name, "udp", "not dropped"))
            # TCP: a fresh connection, the bytes in random chunks.
            with socket.create_connection((HOST, ports.dialer), timeout=2) as tcp:
                i = 0
                try:
                    while i < len(data):
                        n = rnd.randint(1, 64)
                        tcp.sendall(data[i:i + n])
                        i += n
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the service closed a stream it can no longer frame: judged below
                replies = drain(tcp, 0.25)
            status = final_status(replies)
            drain(carrier, 0.05)
            if name in TCP_NO_ANSWER:
                if status is not None:
                    problems.append((name, "tcp", status))
            elif name in ANSWER and status != ANSWER[name]:
                problems.append((name, "tcp", status))
        assert problems == [], "\n".join(map(str, problems))
        # And the service carries a normal call afterwards.
    with running_service(cfg, ports.admin, tmp_path / "proxy2.log") as svc2:
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path):
            result = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=20, rate=20)
        assert result.successful == 20, result.output[-2000:]
    for s in (svc, svc2):
        assert "Traceback" not in s.log()
