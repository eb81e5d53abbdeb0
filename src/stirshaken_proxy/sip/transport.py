"""Addresses of peers as the engine sees them (pure values; the I/O layer maps them to sockets)."""

from __future__ import annotations

from typing import NamedTuple


class Peer(NamedTuple):
    """A remote address on one side of the proxy.

    ``side`` is "dialer" or "carrier"; ``transport`` is "udp" or "tcp". For TCP the tuple
    also names the connection: responses go back on the connection the request came in on.
    """

    side: str
    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


class Send(NamedTuple):
    """Action: send these bytes to that peer. (A NamedTuple: it is made for every datagram.)"""

    data: bytes
    peer: Peer


class Fetch(NamedTuple):
    """Action: fetch this x5u credential and call the engine's ``credential_ready`` after."""

    url: str


Action = Send | Fetch
