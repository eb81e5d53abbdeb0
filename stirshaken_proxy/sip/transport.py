"""Addresses of peers as the engine sees them (pure values; the I/O layer maps them to sockets)."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple


class Side(enum.StrEnum):
    """The two sides of the service: the dialers' trunks and the carriers'."""

    DIALER = "dialer"
    CARRIER = "carrier"

    @property
    def opposite(self) -> Side:
        return Side.CARRIER if self is Side.DIALER else Side.DIALER


class Transport(enum.StrEnum):
    UDP = "udp"
    TCP = "tcp"


class Peer(NamedTuple):
    """A remote address on one side of the proxy. For TCP the tuple also names the
    connection: responses go back on the connection the request came in on."""

    side: Side
    transport: Transport
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport is not Transport.UDP


class Send(NamedTuple):
    """Action: send these bytes to that peer. (A NamedTuple: it is made for every datagram.)"""

    data: bytes
    peer: Peer


# The list a message's handling appends its actions to. Transactions add Send; the engine
# adds its own kinds (fetches, number-health events), which the SIP layer does not know.
Outbox = list[Any]
