"""The authentication service of the STI core as a table: call facts and an explicit ``now``
in, a signed Identity, an unsigned pass or a refusal out. No SIP, no sockets, no clock."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from stirshaken_proxy.policy.accounts import Account, LocalPresence
from stirshaken_proxy.policy.attestation import Reason
from stirshaken_proxy.policy.health import HealthEventKind, HealthLimits, NumberHealth
from stirshaken_proxy.policy.inventory import Inventory, NumberBlock
from stirshaken_proxy.stir.passport import (
    Attestation,
    Signer,
    SigningIdentity,
    decode_passport,
)
from stirshaken_proxy.stir.signing import (
    Authenticator,
    AuthPolicy,
    CallFacts,
    NeighbourSpoofing,
    Refusal,
    Signed,
    Unsigned,
    UnsignedCalls,
)

NOW = 1_790_000_000.0
ACME = Account(name="acme", origid="6a1b3f8e-7c2d-4e5f-9a0b-1c2d3e4f5a6b",
               sources=("127.0.0.1/32",))
GATEWAY = Account(name="gw", origid="11111111-2222-4333-8444-555555555555",
                  sources=("127.0.0.4/32",), gateway=True)
OTHER = Account(name="other", origid="0f0e0d0c-0b0a-4909-8807-060504030201",
                sources=("127.0.0.3/32",))
PRESENCE = Account(name="acme", origid=ACME.origid, sources=ACME.sources,
                   local_presence=LocalPresence.ALWAYS)
KEY = ec.generate_private_key(ec.SECP256R1())
X5U = "https://certs.example/shaken.pem"
INVENTORY = Inventory([
    NumberBlock(first="12025550100", last="12025550199", account="acme"),
    NumberBlock(first="13105550100", last="13105550100", account="acme"),
    NumberBlock(first="13105550000", last="13105550000", account="other"),
])


def authenticator(policy: AuthPolicy | None = None,
                  health: NumberHealth | None = None) -> Authenticator:
    return Authenticator(signers={"default": Signer(SigningIdentity(name="default", key=KEY,
                                                                    x5u=X5U))},
                         inventory=INVENTORY, policy=policy or AuthPolicy(), health=health)


def facts(account: Account | None = ACME, orig: str | None = "12025550142",
          dest: str | None = "12025559999", date: int | None = None,
          presence: bool = False) -> CallFacts:
    return CallFacts(account=account, orig=orig, dest=dest, date=date,
                     presence_requested=presence)


# (what, facts, policy, expected: (attest, reason, iat) or an Unsigned reason or a status)
CASES: list[tuple[str, CallFacts, AuthPolicy, object]] = [
    ("owned number", facts(), AuthPolicy(), ("A", Reason.OWNED_NUMBER, int(NOW))),
    ("number of another account", facts(orig="13105550000"), AuthPolicy(),
     ("B", Reason.NUMBER_OF_ANOTHER_ACCOUNT, int(NOW))),
    ("number nobody owns", facts(orig="19998887777"), AuthPolicy(),
     ("B", Reason.NUMBER_NOT_IN_INVENTORY, int(NOW))),
    ("gateway traffic", facts(account=GATEWAY), AuthPolicy(), ("C", Reason.GATEWAY, int(NOW))),
    ("the callee's own NPA-NXX, not owned", facts(orig="12025559998"), AuthPolicy(),
     ("B", Reason.NEIGHBOUR_SPOOFING, int(NOW))),
    ("neighbour spoofing refused", facts(orig="12025559998"),
     AuthPolicy(neighbour_spoofing=NeighbourSpoofing.REJECT), 403),
    ("the request's Date is iat", facts(date=int(NOW) - 30), AuthPolicy(),
     ("A", Reason.OWNED_NUMBER, int(NOW) - 30)),
    ("Date 61 s old", facts(date=int(NOW) - 61), AuthPolicy(), 403),
    ("Date 61 s ahead", facts(date=int(NOW) + 61), AuthPolicy(), 403),
    ("no account", facts(account=None), AuthPolicy(), "unknown_account"),
    ("no calling number", facts(orig=None), AuthPolicy(), "no_calling_number"),
    ("no called number", facts(dest=None), AuthPolicy(), "no_called_number"),
    ("no account, policy rejects", facts(account=None),
     AuthPolicy(unsigned_calls=UnsignedCalls.REJECT), 403),
    ("anonymous, policy rejects", facts(orig=None),
     AuthPolicy(unsigned_calls=UnsignedCalls.REJECT), 433),
]


@pytest.mark.parametrize(("what", "call", "policy", "expected"), CASES,
                         ids=[c[0] for c in CASES])
def test_signing_table(what: str, call: CallFacts, policy: AuthPolicy, expected: object) -> None:
    auth = authenticator(policy)
    outcome = auth.sign(call, NOW)
    if isinstance(expected, tuple):
        attest, reason, iat = expected
        assert isinstance(outcome, Signed), outcome
        assert (outcome.attest.value, outcome.reason, outcome.iat) == (attest, reason, iat)
        token, _, params = outcome.identity.partition(";")
        assert params == f"info=<{X5U}>;alg=ES256;ppt=shaken"
        passport = decode_passport(token)
        assert passport.verify(KEY.public_key())
        assert passport.claims == {"attest": attest, "dest": {"tn": [call.dest]}, "iat": iat,
                                   "orig": {"tn": call.orig}, "origid": call.account.origid}
        assert auth.stats[("calls_signed", call.account.name, attest, reason.value)] == 1
    elif isinstance(expected, str):
        assert outcome == Unsigned(reason=expected)
        assert auth.stats[("calls_unsigned", expected)] == 1
    else:
        assert isinstance(outcome, Refusal) and outcome.status == expected, outcome


def test_local_presence_picks_an_owned_local_number_and_counts_it() -> None:
    health = NumberHealth(HealthLimits(max_calls_per_hour=1))
    auth = authenticator(health=health)
    first = auth.sign(facts(account=PRESENCE, orig="13105550100", dest="12025559999"), NOW)
    assert isinstance(first, Signed) and first.attest is Attestation.A
    # A number of the account with the callee's area code, not the dialer's own.
    assert first.orig.startswith("1202555") and first.substitution is not None
    assert first.substitution.match == "local"
    assert [e.kind for e in first.events] == [HealthEventKind.ATTEMPT]
    assert first.events[0].tn == first.orig
    # The limit is 1 an hour: the next call takes another number, none is used twice.
    used = {first.orig}
    for n in range(1, 102):
        outcome = auth.sign(facts(account=PRESENCE, orig="13105550100",
                                  dest="12025559999"), NOW + n)
        if isinstance(outcome, Refusal):
            assert (outcome.status, outcome.phrase, outcome.retry_after) == (
                503, "Caller ID Pool Exhausted", 60)
            break
        assert isinstance(outcome, Signed) and outcome.orig not in used
        used.add(outcome.orig)
    assert len(used) == 101  # 100 local numbers and the one in 310


def test_header_mode_asks_per_call() -> None:
    account = Account(name="acme", origid=ACME.origid, sources=ACME.sources,
                      local_presence=LocalPresence.HEADER)
    auth = authenticator(health=NumberHealth(HealthLimits()))
    plain = auth.sign(facts(account=account, orig="13105550100"), NOW)
    asked = auth.sign(facts(account=account, orig="13105550100", presence=True), NOW)
    assert isinstance(plain, Signed) and plain.orig == "13105550100"
    assert plain.substitution is None
    assert isinstance(asked, Signed) and asked.orig.startswith("1202555")


def test_a_new_inventory_applies_at_once() -> None:
    auth = authenticator()
    outcome = auth.sign(facts(orig="14155550100"), NOW)
    assert isinstance(outcome, Signed) and outcome.attest is Attestation.B
    auth.set_inventory(Inventory([NumberBlock(first="14155550100", last="14155550100",
                                              account="acme")], version=2))
    outcome = auth.sign(facts(orig="14155550100"), NOW)
    assert isinstance(outcome, Signed) and outcome.attest is Attestation.A
