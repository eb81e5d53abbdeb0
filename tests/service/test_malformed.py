"""Garbage, truncated and oversized input never stops the service; a normal call follows."""

from __future__ import annotations

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

INVITE = (
    b"INVITE sip:12025550199@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKmalformed%d\r\n"
    b"From: <sip:12025550100@127.0.0.1>;tag=1\r\n"
    b"To: <sip:12025550199@127.0.0.1>\r\n"
    b"Call-ID: malformed-%d\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Max-Forwards: 70\r\n"
)


def _cases(port: int) -> list[tuple[bytes, bytes | None]]:
    """(datagram, expected status line prefix or None when it must be dropped)."""
    full = INVITE % (port, 1, 1) + b"Content-Length: 0\r\n\r\n"
    return [
        (b"\x00\xff garbage \x01", None),
        (b"", None),
        (b"\r\n\r\n", None),
        (full[:40], None),  # truncated inside the Via: no usable Via
        (INVITE % (port, 2, 2) + b"Content-Length: 500\r\n\r\nv=0", b"SIP/2.0 400 "),
        (INVITE % (port, 3, 3) + b"Content-Length: five\r\n\r\n", b"SIP/2.0 400 "),
        (INVITE % (port, 4, 4) + b"Content-Length: 20000\r\n\r\n" + b"x" * 20000,
         b"SIP/2.0 513 "),
        (INVITE.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1) % (port, 5, 5)
         + b"Content-Length: 0\r\n\r\n", b"SIP/2.0 505 "),
        (INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 0") % (port, 6, 6)
         + b"Content-Length: 0\r\n\r\n", b"SIP/2.0 483 "),
        (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\n\r\n", None),
    ]


def test_malformed_datagrams_then_a_call(tmp_path: Path, ports: Ports) -> None:
    cfg = write_config(tmp_path / "p.toml", ports, sip="max_message_size = 16384")
    with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc:
        _send_cases(ports)
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path):
            result = run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=20, rate=20)
        assert result.successful == 20, result.output[-2000:]
        assert svc.proc is not None and svc.proc.poll() is None
    assert "Traceback" not in svc.log()


def _send_cases(ports: Ports) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(2.0)
        port = sock.getsockname()[1]
        for data, expected in _cases(port):
            sock.sendto(data, (HOST, ports.dialer))
            if expected is None:
                continue
            while True:
                reply = sock.recv(65535)
                if not reply.startswith(b"SIP/2.0 100 "):
                    break
            assert reply.startswith(expected), (data[:60], reply[:80])
        # Nothing more arrives for the dropped ones.
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            while True:
                reply = sock.recv(65535)
                assert reply.startswith(b"SIP/2.0 1"), reply[:80]
