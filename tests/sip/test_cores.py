"""The compiled core against the Python reference: the same result, field for field, or the
same error, on RFC 4475's torture messages, a call's messages through a long-lived cache,
and generated messages (hypothesis: built from SIP's grammar with its edge cases, mutated
torture messages, random bytes). FUZZ_EXAMPLES raises the budget."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.inprocess import INVITE
from stirshaken_proxy.sip import message
from stirshaken_proxy.sip.message import ParseCache, SipMessage
from tests.sip.cores import attributes, outcome, same_on_both

DATA = Path(__file__).resolve().parent.parent / "data" / "rfc4475"
TORTURE = sorted(DATA.glob("*.dat"))
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "600"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
compiled = pytest.mark.skipif(not message.compiled_available(),
                              reason="the compiled core is not built in this install")


def test_the_compiled_core_is_built_where_a_compiler_was() -> None:
    # scripts/setup.sh builds it on every machine it installs (gcc and Python's headers);
    # STIRSHAKEN_CORE=python marks a run that is meant to be without it.
    if os.environ.get("STIRSHAKEN_CORE") == "python":
        pytest.skip("a run of the Python core")
    assert message.compiled_available()
    assert message.core_in_use() == "compiled"


@compiled
def test_the_everyday_messages_take_the_compiled_path() -> None:
    """Not a fall back to the reference each time: the fast path accepts a SIPp INVITE."""
    from stirshaken_proxy.sip import _cmessage

    cache = ParseCache()
    msg = SipMessage(INVITE)
    assert _cmessage.parse_fast(msg, INVITE, 65535, False, cache.names, cache.canonical,
                                cache.addresses, message._check_request_uri,
                                cache.check_addresses, message.Via) is True
    assert type(msg.headers[0]).__module__ == "stirshaken_proxy.sip._cmessage"
    # The top Via made there too, as the reference makes it.
    top, reference = msg._top_via, message.Via(msg.get("via") or "")
    assert type(top) is message.Via
    assert [getattr(top, name) for name in attributes(message.Via)] == [
        getattr(reference, name) for name in attributes(message.Via)]
    assert top.rfc3261_branch is True
    assert _cmessage.via_fields("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;rport") == (
        "UDP", "127.0.0.1", 5070, {"branch": "z9hG4bK-1", "rport": None})


@pytest.mark.parametrize("path", TORTURE, ids=[p.stem for p in TORTURE])
@pytest.mark.parametrize("stream", [False, True], ids=["datagram", "stream"])
def test_rfc4475_the_same_on_both_cores(path: Path, stream: bool) -> None:
    same_on_both(path.read_bytes(), stream=stream)


@compiled
def test_a_calls_messages_through_one_long_lived_cache_each() -> None:
    from bench.call_flow import _answer, _in_dialog

    flow = [INVITE, _answer(INVITE, 180, b"Ringing"), _answer(INVITE, 200, b"OK"),
            _in_dialog(b"ACK", 1, b"z9hG4bK-a", 1), _in_dialog(b"BYE", 2, b"z9hG4bK-b", 1)]
    caches = {"python": ParseCache(), "compiled": ParseCache()}
    for _ in range(2):  # the second time every name and address is in the caches
        for data in flow:
            assert outcome(data, "compiled", caches["compiled"]) == outcome(
                data, "python", caches["python"])
    # (the compiled core keeps the names it has seen in a table of its own as well: its
    # ParseCache learns only the ones the table does not hold yet)
    assert caches["compiled"].names.items() <= caches["python"].names.items()
    assert caches["python"].addresses == caches["compiled"].addresses


# -- generated messages -------------------------------------------------------------------

_TEXT = st.lists(st.sampled_from(
    [*"abcAZ09 \t;,:=@<>\"'\\/.-_+*%[]()?&$!~`", "\r", "\n", "\r\n", "\x00", "\xe9", "\x7f",
     "\r\n ", "\r\n\t"]),
    max_size=24).map("".join)
# Each part of a message: one of the everyday forms most of the time, else an edge case or
# noise, so that both the accepted and the refused paths are well covered.
_URIS = (["sip:+12025550199@127.0.0.1:5060;user=phone", "sip:bob@example.com",
          "sips:b@[::1]:5061", "sip:127.0.0.1", "sip:a@b:65535;lr", "sip:a@b:0",
          "sip:a@b;transport=tcp;maddr=[::1]", "sip:%61@b", "sip:a.b-c@x-y.z:1;a=b;c"],
         ["sip:a@b:99999", "sip:a@b?subject=x", "tel:+1202", "<sip:a@b>", "sip:@b", "sip:a@b;",
          "sip:a@b;x=", "sip:a@-b", "mailto:a@b", "sip:a b@c", "SIP:a@b", "sip:a@b:123456",
          "sip:[::1", "sip:a@b:x", "sip:a@b;p=\xe9", "sip:a@@b"])
_METHODS = (["INVITE", "ACK", "BYE", "OPTIONS", "REGISTER", "X-Y.Z", "invite"],
            ["INV ITE", "", "N\xe9W", "IN<VITE"])
_VIAS = (["SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;rport",
          "SIP/2.0/TCP [::1]:5060;branch=z9hG4bKx;received=1.2.3.4;rport=5",
          "SIP/2.0/UDP host.example.com;branch=z9hG4bK;ttl=1;maddr=h", "SIP/2.0/udp H;Branch=X",
          "SIP/2.0/UDP h;branch=z9hG4bK1;branch=z9hG4bK2", "SIP/2.0/UDP h;a=b=c",
          "SIP/2.0/TLS h:0050;x=\"a;b\"", "SIP/2.0/UDP\th;branch=", "SIP/2.0/UDP  h:1"],
         ["SIP/2.0/UDP h:65536", "SIP / 2.0 / UDP h ; branch = z9hG4bK1", "SIP/2.0/UDP h;branch",
          "SIP/2.0/UDP h;;x", "SIP/2.0/UDP h:5060 ;branch=x", "SIP/2.0/UDP H\xc9ST;b=1",
          "SIP/2.0/UDP h,SIP/2.0/TCP k;branch=z9hG4bK2", "SIP/2.0/UDP [::1", "SIP/2.0/UDP h:1:2",
          "SIP/2.0/UDP h;x=\xe9", "SIP/2.0/UDP h;[a]=b", "SIP/2.0/UDP h;x= y", "SIP/2.0/UDP"])
_ADDRESSES = (["<sip:+12025550100@127.0.0.1>;tag=1", "\"Sales\" <sip:a@b>;tag=x", "sip:a@b",
               "<tel:+1202>;tag=2", "\"q\\\"x\" <sip:a@b>", "<sip:a@b>;tag=a;x=y"],
              ["<sip:a@b", "a, b", "*", "<sip:a@b>, <sip:c@d>", "", "<sip:a@b>;tag"])
# further lines: names a message may repeat, else a single one again or a bad name
_NAMES = (["Route", "Record-Route", "Identity", "X-Custom", "Supported", "Allow", "Subject",
           "Contact", "m", "Via", "v", "VIA", "Route ", "k"],
          ["Bad Name", "", " Via", "Via\t", "N\xe9", "a@b", "f", "To", "CSeq", "l", "i"])


def _part(draw: st.DrawFn, choices: tuple[list[str], list[str]]) -> str:
    everyday, edges = choices
    roll = draw(st.integers(0, 19))
    if roll < 16:
        return draw(st.sampled_from(everyday))
    if roll < 19:
        return draw(st.sampled_from(edges))
    return draw(_TEXT)


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    rare = st.integers(0, 9).map(lambda n: n == 0)
    if draw(st.booleans()):
        method = _part(draw, _METHODS)
        version = "SIP/2.0" if not draw(rare) else draw(st.sampled_from(
            ["SIP/3.0", "sip/2.0", "SIP/2.0 ", ""]))
        start = f"{method} {_part(draw, _URIS)} {version}"
        cseq_method = method if not draw(rare) else draw(st.sampled_from(["INVITE", "BYE"]))
    else:
        start = draw(st.sampled_from(["SIP/2.0 200 OK", "SIP/2.0 180 Ringing", "SIP/2.0 100 ",
                                      "SIP/2.0 699 x", "SIP/2.0 486 Busy Here \xe9"]))
        if draw(rare):
            start = draw(st.sampled_from(["SIP/2.0 99 Low", "SIP/2.0 700 High", "SIP/2.0 200",
                                          "SIP/2.0  200 OK", "SIP/2.1 200 OK", "SIP/2.0 2x0 OK"]))
        cseq_method = "INVITE" if not draw(rare) else draw(st.sampled_from(["", "IN VITE"]))
    cseq = "1" if not draw(rare) else draw(st.sampled_from(
        ["4294967295", "4294967296", "00000000001", "", "x", "999999999999"]))
    gap = " " if not draw(rare) else draw(st.sampled_from(["  ", "\t", "", " \t "]))
    lines = [("Via", _part(draw, _VIAS)), ("From", _part(draw, _ADDRESSES)),
             ("To", _part(draw, _ADDRESSES)),
             ("Call-ID", "c1@h" if not draw(rare) else draw(st.sampled_from(["", " x "]) | _TEXT)),
             ("CSeq", f"{cseq}{gap}{cseq_method}")]
    if draw(st.booleans()):
        lines.append(("Max-Forwards", "70" if not draw(rare) else draw(st.sampled_from(
            ["0", "", "7a", "\xb9"]))))
    if draw(st.booleans()):
        lines.append(("Contact", _part(draw, _ADDRESSES)))
    for _ in range(draw(st.integers(0, 4))):
        name = _part(draw, _NAMES)
        value = _part(draw, (["a", "x;y=z", "<sip:r@h;lr>", " spaced  out ", "\xe9t\xe9"],
                             ["", "a\rb", "a\nb", "\x00"]))
        if name.strip().lower() in ("via", "v"):
            value = _part(draw, _VIAS)
        elif name.lower() in ("contact", "m"):
            value = _part(draw, _ADDRESSES)
        lines.append((name, value))
    if draw(rare):
        lines.append(draw(st.sampled_from([("From", "<sip:x@y>"), ("CSeq", "2 BYE"),
                                           ("Call-ID", "again"), ("Via", "SIP/2.0/UDP z")])))
    if draw(rare):
        lines.remove(draw(st.sampled_from(lines)))
    body = draw(st.sampled_from([b"", b"v=0\r\n", b"x" * 40]))
    length: str | None = str(len(body))
    if draw(rare):
        length = draw(st.sampled_from(["0", "9999", "", "1a", None, "00000000000000000000001",
                                       "1234567890"]))
    if length is not None:
        lines.append(("Content-Length", length))
    if draw(rare):
        lines = draw(st.permutations(lines))
    sep = ": " if not draw(rare) else draw(st.sampled_from([":", " : ", ":\t", ":  ", "\t:"]))
    head = start + "\r\n" + "".join(f"{n}{sep}{v}\r\n" for n, v in lines)
    end = "\r\n" if not draw(rare) else draw(st.sampled_from(["", "\r\n\r\n", "\n"]))
    return head.encode("latin-1") + end.encode() + body


@FUZZ
@given(_messages(), st.booleans())
def test_generated_messages_the_same_on_both_cores(data: bytes, stream: bool) -> None:
    same_on_both(data, stream=stream)


CORPUS = [p.read_bytes() for p in TORTURE] + [INVITE]


@FUZZ
@given(st.sampled_from(CORPUS), st.lists(st.tuples(st.integers(0, 4000), st.binary(max_size=6),
                                                   st.integers(0, 6)), max_size=5))
def test_mutated_messages_the_same_on_both_cores(base: bytes,
                                                 edits: list[tuple[int, bytes, int]]) -> None:
    data = bytearray(base)
    for pos, insert, delete in edits:
        at = pos % (len(data) + 1)
        data[at:at + delete] = insert
    same_on_both(bytes(data))


@FUZZ
@given(st.binary(max_size=1024))
def test_random_bytes_the_same_on_both_cores(data: bytes) -> None:
    same_on_both(data)


@FUZZ
@given(st.sampled_from(_VIAS[0] + _VIAS[1]) | _TEXT.map(lambda t: "SIP/2.0/UDP " + t))
def test_via_values_the_same_on_both_cores(text: str) -> None:
    results = []
    before = message.core_in_use()
    for core in ("python", "compiled") if message.compiled_available() else ("python",):
        message.use_core(core)
        try:
            v = message.Via(text)
            results.append((v.transport, v.host, v.port, list(v.params.items()), v.branch))
        except message.SipError as exc:
            results.append(("error", exc.status, exc.detail))
        finally:
            message.use_core(before)
    assert len(set(map(repr, results))) == 1, (text, results)


def test_choosing_a_core() -> None:
    before = message.core_in_use()
    assert message.use_core("python") == "python"
    try:
        if message.compiled_available():
            assert message.use_core("compiled") == "compiled"
        else:
            with pytest.raises(ValueError, match="was not built"):
                message.use_core("compiled")
        with pytest.raises(ValueError, match="unknown core 'fast'"):
            message.use_core("fast")
    finally:
        message.use_core(before)


def test_without_the_compiled_core_the_python_one_serves(tmp_path: Path) -> None:
    """As an install made without a C compiler: the module is missing, the Python core is
    used, and asking for the compiled one is a configuration error that says why."""
    import subprocess
    import sys

    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class NoCompiledCore:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'stirshaken_proxy.sip._cmessage':\n"
        "            raise ImportError('not built')\n"
        "sys.meta_path.insert(0, NoCompiledCore())\n")
    code = ("from stirshaken_proxy.sip import message as m\n"
            "from bench.inprocess import INVITE\n"
            "print(m.core_in_use(), m.compiled_available(), m.parse_message(INVITE).call_id)\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parents[2]}"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "python False 1-3131@127.0.0.1\n"
    cfg = tmp_path / "c.toml"
    cfg.write_text('[dialer]\nlisten = "127.0.0.1:5060"\nnext_hop = "127.0.0.1:5080"\n'
                   '[carrier]\nlisten = "127.0.0.1:5062"\nnext_hop = "127.0.0.1:5082"\n'
                   '[sip]\ncore = "compiled"\n')
    done = subprocess.run([sys.executable, "-m", "stirshaken_proxy", "check-config", "--config",
                           str(cfg)], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode != 0
    assert "[sip] core: the compiled core is not built in this install" in done.stderr


_SPLIT_TEXT = st.lists(st.sampled_from(
    [*"ab ,;\t\"<>\\", "\n", "\xe9", "\u20ac", "\U0001f4de", "<sip:a@h;lr>", '"x, y"']),
    max_size=30).map("".join)


@compiled
@FUZZ
@given(_SPLIT_TEXT, st.sampled_from(",;"))
def test_header_values_split_the_same_on_both_cores(value: str, sep: str) -> None:
    from stirshaken_proxy.sip import _cmessage, uri  # type: ignore[attr-defined]

    assert _cmessage.split_values(value, sep) == uri.split_values_reference(value, sep), value


@compiled
def test_split_values_is_the_compiled_one_while_that_core_is_in_use() -> None:
    from stirshaken_proxy.sip import _cmessage, uri  # type: ignore[attr-defined]

    before = message.core_in_use()
    try:
        message.use_core("python")
        assert uri.compiled_split is None
        message.use_core("compiled")
        assert uri.compiled_split is _cmessage.split_values
        assert uri.split_values('<sip:a;lr>, "b,c" <sip:d>', ",") == [
            "<sip:a;lr>", '"b,c" <sip:d>']
    finally:
        message.use_core(before)
    with pytest.raises(TypeError):
        _cmessage.split_values("a,b", "|")


_LINES = st.sampled_from([b"Via: SIP/2.0/UDP p:5060;branch=z9hG4bKx\r\n", b"Max-Forwards: 69\r\n",
                          b"Record-Route: <sip:p;lr>\r\n", b"X: \xe9\r\n", b""])
_EDITS = st.lists(st.one_of(
    st.tuples(st.just("prepend"), _LINES), st.tuples(st.just("append"), _LINES),
    st.tuples(st.just("replace"), st.integers(0, 40), _LINES),
    st.tuples(st.just("remove"), st.integers(0, 40)),
    st.tuples(st.just("start"), st.sampled_from([b"SIP/2.0 200 OK\r\n", b""]))), max_size=8)


_JOINED = ("via", "from", "to", "call-id", "cseq", "route", "contact", "x-missing")


def _edited(data: bytes, core: str, edits: list[tuple[object, ...]]
            ) -> tuple[bytes, list[bytes]] | None:
    """``data`` parsed with ``core``, the edits applied, serialised, with each header's lines
    as received and as edited (SipMessage.joined), None when it did not parse.
    The serialising core is always the compiled one when it is built, so a message the
    Python reference parsed (its own Header objects) is serialised by the compiled code too."""
    before = message.core_in_use()
    message.use_core(core)
    try:
        try:
            msg = message.parse_message(data, cache=ParseCache())
        except message.SipError:
            return None
    finally:
        message.use_core(before)
    for edit in edits:
        kind, *args = edit
        if kind == "prepend":
            msg.prepend_header(args[0])  # type: ignore[arg-type]
        elif kind == "append":
            msg.append_header(args[0])  # type: ignore[arg-type]
        elif kind == "start":
            msg.set_start_line(args[0])  # type: ignore[arg-type]
        elif msg.headers:
            i = args[0] % len(msg.headers)  # type: ignore[operator]
            if kind == "replace":
                msg.replace_header(i, args[1])  # type: ignore[arg-type]
            else:
                msg.remove_header(i)
    return msg.serialize(), [msg.joined(name, current=current) for name in _JOINED
                             for current in (False, True)]


@compiled
@FUZZ
@given(st.sampled_from(CORPUS), _EDITS)
def test_edited_messages_serialise_the_same_on_both_cores(
        data: bytes, edits: list[tuple[object, ...]]) -> None:
    """Serialising (SipMessage.serialize: the compiled assemble, or the Python reference)
    gives the same bytes after any mix of the proxy's edits, whichever core parsed; so do a
    header's lines joined (SipMessage.joined: joined_lines, or the reference's join)."""
    before = message.core_in_use()
    try:
        message.use_core("python")
        reference = _edited(data, "python", edits)
        message.use_core("compiled")
        assert _edited(data, "compiled", edits) == reference
        assert _edited(data, "python", edits) == reference  # Python Header objects
    finally:
        message.use_core(before)


@compiled
def test_assemble_refuses_what_serialise_never_passes() -> None:
    from stirshaken_proxy.sip import _cmessage  # type: ignore[attr-defined]

    msg = message.parse_message(INVITE)
    args = [msg.raw, None, msg.line_end, [], {}, msg.headers, msg.head_end, [], True,
            msg.body_start, msg.body_end]
    assert _cmessage.assemble(*args) == INVITE
    for at, bad, error in ((3, [b"ok", "text"], TypeError), (4, {99: b"x"}, IndexError),
                           (2, -1, ValueError), (4, {0: "text"}, TypeError)):
        wrong = list(args)
        wrong[at] = bad
        with pytest.raises(error):
            _cmessage.assemble(*wrong)


_ADDRESS_VALUES = st.sampled_from([
    "<sip:a@b>", "*", "<sip:a@b>, <sip:c@d>", '"S" <sip:a@b>', "sip:a@b", "<sip:a@b",
    "<sip:a@b>;tag=1;=x", "<sip:a@b>;=x", "<sip:a@b>;TAG=1"]) | st.sampled_from(
    _ADDRESSES[0] + _ADDRESSES[1]) | _TEXT
_TAGS = st.sampled_from(["", ";tag=1", ";tag=zz.9", ";tag=a b", ";tag=", ";tag=\xe9"])


@st.composite
def _dialog_values(draw: st.DrawFn) -> list[tuple[str, str, str, str, str]]:
    """Messages whose From, To and Contact come from a pool of three values, so that one
    message's Contact is often another's From."""
    pool = draw(st.lists(_ADDRESS_VALUES, min_size=3, max_size=3))
    value = st.sampled_from(pool)
    return draw(st.lists(st.tuples(value, _TAGS, value, _TAGS, value), min_size=1, max_size=6))


@FUZZ
@given(_dialog_values())
def test_a_long_lived_cache_never_changes_an_answer(
        messages: list[tuple[str, str, str, str, str]]) -> None:
    """The From/To/Contact values a cache remembers (From and To without their tags) never
    let through a message that a fresh parse refuses, nor the other way round, on either
    core."""
    cores = ["python", "compiled"] if message.compiled_available() else ["python"]
    caches = {core: ParseCache() for core in cores}
    for from_, from_tag, to, to_tag, contact in messages:
        data = (f"OPTIONS sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
                f"From: {from_}{from_tag}\r\nTo: {to}{to_tag}\r\nCall-ID: c\r\n"
                f"CSeq: 1 OPTIONS\r\nContact: {contact}\r\nContent-Length: 0\r\n\r\n"
                ).encode("latin-1", "replace")
        fresh = outcome(data, "python", ParseCache())
        for core in cores:
            assert outcome(data, core, caches[core]) == fresh, (core, data)
