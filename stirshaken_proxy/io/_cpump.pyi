# The compiled core's datagram path (_cpump.c): io/shell.py and io/transports.py are its
# reference.
from collections import Counter
from collections.abc import Callable
from typing import Any

class Pump:
    at: float | None
    cover: float
    def __init__(self, receive: Callable[..., list[Any]],
                 earliest: Callable[[], float | None], send_type: type, udp: Any,
                 endpoints: dict[Any, Any], carry_out: Callable[[Any], None],
                 arm: Callable[[float], None],
                 failed: Callable[[BaseException, Any], None]) -> None: ...
    def process(self, data: bytes, peer: Any, /) -> None: ...
    def execute(self, actions: list[Any], /) -> None: ...

class Endpoint:
    side: Any
    sink: Callable[[bytes, Any], None]
    counters: Counter[str]
    transport: Any
    def __init__(self, side: Any, sink: Callable[[bytes, Any], None], counters: Counter[str],
                 peer_type: type, udp: Any, peers_limit: int = 4096) -> None: ...
    def datagram_received(self, data: bytes, addr: tuple[Any, ...], /) -> None: ...
    def connection_made(self, transport: Any, /) -> None: ...
    def error_received(self, exc: Exception, /) -> None: ...
    def connection_lost(self, exc: Exception | None, /) -> None: ...
