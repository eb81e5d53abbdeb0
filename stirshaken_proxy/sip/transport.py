"""Addresses of peers as the engine sees them (pure values; the I/O layer maps them to sockets)."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple


class Side(enum.StrEnum):
    """Where a message arrived: the in-path proxy's two sides (the dialers' trunks and the
    carriers'), or the redirect server's listener (an SBC asking for a 302)."""

    DIALER = "dialer"
    CARRIER = "carrier"
    REDIRECT = "redirect"


class Transport(enum.StrEnum):
    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"  # SIP over TLS over TCP (RFC 3261 §26.2, RFC 5630)


_UDP = Transport.UDP  # a member through its class costs ~70 ns: reliable is asked per message


class Peer(NamedTuple):
    """A remote address on one side of the proxy. For TCP the tuple also names the
    connection: responses go back on the connection the request came in on."""

    side: Side
    transport: Transport
    host: str
    port: int
    # TLS: the identities of the client certificate the peer presented and we verified
    # (SubjectAltName URI and DNS names, else the CN); empty otherwise.
    names: tuple[str, ...] = ()

    @property
    def reliable(self) -> bool:
        return self.transport is not _UDP


class Send(NamedTuple):
    """Action: send these bytes to that peer. (A NamedTuple: it is made for every datagram.)"""

    data: bytes
    peer: Peer


# The list a message's handling appends its actions to. Transactions add Send; the engine
# adds its own kinds (fetches, number-health events), which the SIP layer does not know.
Outbox = list[Any]
