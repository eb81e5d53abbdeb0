"""The policy bundle a front end calls: who the accounts are, the STI core (signing and
verification) and number health. A reload builds a new bundle and hands it over in one call;
calls in progress live in the front end, not here, so they carry on."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..policy.accounts import AccountDirectory
from ..policy.digest import DigestAuth
from ..policy.health import NumberHealth
from ..stir.signing import Authenticator
from ..stir.verification import VerificationService, VerifyPolicy
from .sources import SourceFilter


@dataclass(frozen=True, kw_only=True)
class Services:
    dialer_sources: SourceFilter  # who may send requests on the dialer side
    carrier_sources: SourceFilter
    accounts: AccountDirectory = field(default_factory=lambda: AccountDirectory([]))
    authenticator: Authenticator | None = None  # None: nothing is signed
    verification: VerificationService | None = None  # None: nothing is verified
    verify_policy: VerifyPolicy = field(default_factory=VerifyPolicy)
    health: NumberHealth | None = None  # None: number health is off
    digest: DigestAuth | None = None  # dialers recognised by SIP digest credentials


__all__ = ["Services"]
