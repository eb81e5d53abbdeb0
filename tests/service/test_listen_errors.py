"""A port the service must listen on is taken (another instance still running, say): the
service says which address and why in one line, exits 1, and prints no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import HOST, ROOT, Ports, write_config


@pytest.mark.parametrize("taken", ["dialer", "admin"])
def test_a_taken_port_is_named_without_a_traceback(tmp_path: Path, taken: str) -> None:
    ports = Ports.pick()
    cfg = write_config(tmp_path / "p.toml", ports)
    port = getattr(ports, taken)
    # the SIP side's UDP socket (uvloop keeps the errno on the cause), or the admin's TCP
    holder = socket.socket(socket.AF_INET,
                           socket.SOCK_DGRAM if taken == "dialer" else socket.SOCK_STREAM)
    with holder:
        holder.bind((HOST, port))
        if taken == "admin":
            holder.listen()
        run = subprocess.run([sys.executable, "-m", "stirshaken_proxy", "run", "--config",
                              str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr[-3000:]
    line = next(x for x in run.stderr.splitlines() if "cannot listen" in x)
    assert line.startswith("stirshaken-proxy: cannot listen: ")
    assert f"'{HOST}', {port})" in line and "ddress already in use" in line, line
    assert "is another instance running?" in line
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
