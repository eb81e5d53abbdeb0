"""What the engine remembers of each call it signed: the calling number its health is counted
on, when it was answered, and a replaced caller ID to map in both directions (pure).

This is call state, not policy: it lives in the engine and outlives a reload of the policy
bundle, so calls in progress keep their mapping and their statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from ..sip.message import SipMessage
from ..sip.transport import Side
from ..sip.uri import uri_user, with_uri_user

_V = TypeVar("_V")
_IDENTITY_HEADERS = (("from", b"From"), ("to", b"To"),
                     ("p-asserted-identity", b"P-Asserted-Identity"))


@dataclass(frozen=True, kw_only=True, slots=True)
class IdentityMap:
    """A call whose caller ID was replaced: the dialer's own users and the presented one."""

    from_user: str
    pai_user: str | None
    chosen: str  # "+" and the canonical chosen number


@dataclass(slots=True, init=False)
class TrackedCall:
    """(Its __init__ written out: dataclass's is interpreted Python, and every signed call
    makes one.)"""

    tn: str  # the calling number signed, whose health the call counts in
    answered_at: float  # 0 until a 2xx
    identities: IdentityMap | None
    done: bool  # its final response (non-2xx) or BYE was counted

    def __init__(self, *, tn: str, identities: IdentityMap | None = None) -> None:
        self.tn = tn
        self.answered_at = 0.0
        self.identities = identities
        self.done = False


class CallTable(dict[str, _V]):
    """Signed calls (or what is kept of them) by Call-ID, bounded (the oldest go first). A
    dict, so that the tests the proxy makes on every message (is any call tracked? this
    one?) run in C."""

    __slots__ = ("max_calls",)

    def __init__(self, max_calls: int = 200_000) -> None:
        super().__init__()
        self.max_calls = max_calls

    def add(self, call_id: str, call: _V) -> None:
        self[call_id] = call
        if len(self) > self.max_calls:
            del self[next(iter(self))]


def identity_map(msg: SipMessage, chosen: str) -> IdentityMap:
    """The dialer's identities in ``msg`` and the number that replaces them toward the carrier."""
    pai = msg.get("p-asserted-identity")
    return IdentityMap(from_user=uri_user(msg.get("from") or ""),
                       pai_user=uri_user(pai) if pai else None, chosen="+" + chosen)


def map_identities(msg: SipMessage, entry: IdentityMap, out_side: Side) -> None:
    """Toward the carrier the dialer's identity becomes the chosen number; toward the dialer
    the chosen number becomes the dialer's identity again, in From, To and
    P-Asserted-Identity. Tags and Call-ID never change, so both dialogs stay whole (UAs match
    dialogs on them, RFC 3261 §12)."""
    for name, label in _IDENTITY_HEADERS:
        for i in msg.index.get(name, ()):
            value = msg.headers[i].value
            user = uri_user(value)
            if not user:
                continue
            if out_side is not Side.DIALER and user in (entry.from_user, entry.pai_user) \
                    and user != entry.chosen:
                new = with_uri_user(value, entry.chosen)
            elif out_side is Side.DIALER and user == entry.chosen:
                new = with_uri_user(value, entry.pai_user if name == "p-asserted-identity"
                                    and entry.pai_user else entry.from_user)
            else:
                continue
            msg.replace_header(i, label + b": " + new.encode("latin-1") + b"\r\n")
