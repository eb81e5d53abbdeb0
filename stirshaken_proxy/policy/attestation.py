"""The attestation decision (ATIS-1000074 §5.2.3), pure and explainable."""

from __future__ import annotations

import enum
from typing import NamedTuple

from ..stir.passport import Attestation
from .accounts import Account
from .inventory import Inventory
from .presence import is_neighbour


class Reason(enum.Enum):
    """Why a call got its attestation; used as a metrics label and in logs."""

    OWNED_NUMBER = "owned_number"  # A: the account owns the calling number
    NUMBER_NOT_IN_INVENTORY = "number_not_in_inventory"  # B: nobody we know owns it
    NUMBER_OF_ANOTHER_ACCOUNT = "number_of_another_account"  # B: another account owns it
    GATEWAY = "gateway"  # C: the call entered through a gateway
    NEIGHBOUR_SPOOFING = "neighbour_spoofing"  # B: not owned and the callee's own NPA-NXX


class Decision(NamedTuple):
    """(A NamedTuple, made by tuple.__new__ below: its own __new__ is interpreted Python, and
    every signed call makes one.)"""

    level: Attestation
    reason: Reason
    account: str
    owner: str | None  # the account that owns the number, when one does


def decide(account: Account, orig_tn: str, inventory: Inventory,
           dest_tn: str | None = None) -> Decision:
    """A when the account owns the number; B when it does not (never A for a number that
    another account owns; the reason names a caller ID with the callee's own NPA-NXX,
    "neighbour spoofing"); C for gateway traffic."""
    owner = inventory.owner(orig_tn)
    if account.gateway:
        return tuple.__new__(Decision, (Attestation.C, Reason.GATEWAY, account.name, owner))
    if owner == account.name:
        return tuple.__new__(Decision, (Attestation.A, Reason.OWNED_NUMBER, account.name, owner))
    if dest_tn is not None and is_neighbour(orig_tn, dest_tn):
        reason = Reason.NEIGHBOUR_SPOOFING
    elif owner is None:
        reason = Reason.NUMBER_NOT_IN_INVENTORY
    else:
        reason = Reason.NUMBER_OF_ANOTHER_ACCOUNT
    return tuple.__new__(Decision, (Attestation.B, reason, account.name, owner))
