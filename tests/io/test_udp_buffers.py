"""The UDP listeners get the buffer `[transport] udp_buffer` asks for (what arrives during a
GC pause or a busy turn of the loop waits there instead of being dropped), or a warning
naming the kernel limit when the kernel grants less."""

from __future__ import annotations

import logging
import socket
from collections import Counter
from pathlib import Path

import pytest

from bench.inprocess import engine
from stirshaken_proxy.io.shell import EngineShell
from stirshaken_proxy.sip.transport import Side
from tests.support import HOST, free_port

RMEM_MAX = int(Path("/proc/sys/net/core/rmem_max").read_text())


def _granted(shell: EngineShell, side: Side) -> int:
    transport = shell.udp[side].transport
    assert transport is not None
    sock: socket.socket = transport.get_extra_info("socket")
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2


@pytest.mark.parametrize("asked", [256 * 1024, RMEM_MAX, RMEM_MAX * 4])
async def test_udp_listeners_get_their_buffer(asked: int, caplog: pytest.LogCaptureFixture) -> None:
    shell = EngineShell(engine(), counters=Counter(), timer_resolution=0.01)
    with caplog.at_level(logging.WARNING, logger="stirshaken_proxy.io.shell"):
        await shell.listen([(Side.DIALER, HOST, free_port()), (Side.CARRIER, HOST, free_port())],
                           tcp=False, shared=False, max_message_size=65535,
                           max_tcp_connections=8, max_tcp_pending_bytes=1 << 16,
                           tcp_connect_timeout=1.0, udp_buffer=asked)
    try:
        for side in (Side.DIALER, Side.CARRIER):
            assert _granted(shell, side) == min(asked, RMEM_MAX)
        warned = [r.getMessage() for r in caplog.records]
        if asked > RMEM_MAX:
            assert len(warned) == 2
            assert warned[0].endswith(f"{RMEM_MAX} bytes granted of {asked} asked ([transport] "
                                      "udp_buffer); raise net.core.rmem_max for more")
        else:
            assert warned == []
    finally:
        await shell.close()
