"""What a parse gave, as plain data, so the compiled core and the Python reference can be
compared field by field (tests/sip/test_cores.py, fuzz/fuzz_cores.py)."""

from __future__ import annotations

from typing import Any

from stirshaken_proxy.sip import message
from stirshaken_proxy.sip.errors import SipError
from stirshaken_proxy.sip.message import ParseCache, parse_message

FIELDS = ("is_request", "method", "uri", "status", "reason", "line_end", "head_end",
          "body_start", "body_end", "call_id", "cseq", "cseq_method")


def _via(v: message.Via) -> tuple[Any, ...]:
    return (v.text, v.transport, v.host, v.port, list(v.params.items()), v.branch,
            v.rfc3261_branch)


def outcome(data: bytes, core: str, cache: ParseCache | None = None, *, stream: bool = False,
            max_size: int = 65535) -> tuple[Any, ...]:
    """Everything parsing ``data`` with ``core`` gives: the error, or every field, header,
    Via and the serialised message."""
    before = message.core_in_use()
    message.use_core(core)
    try:
        try:
            msg = parse_message(data, max_size=max_size, stream=stream, cache=cache)
        except SipError as exc:
            partial = exc.message
            return ("error", exc.status, exc.detail, exc.fatal_stream,
                    None if partial is None else (partial.is_request, partial.line_end))
        try:
            vias: Any = [_via(v) for v in msg.vias()]
        except SipError as exc:
            vias = ("error", exc.status, exc.detail)
        top = _via(msg.top_via())
        # Every slot set, and of the same type, on both cores.
        slots = [(name, type(getattr(msg, name)).__name__)
                 for name in attributes(message.SipMessage)]
        return ("ok", *(getattr(msg, f) for f in FIELDS),
                [(type(h).__name__ == "Header", h.name, h.value, h.start, h.end)
                 for h in msg.headers],
                sorted(msg.index.items()), top, vias, slots, msg.serialize())
    finally:
        message.use_core(before)


def attributes(cls: type) -> list[str]:
    """The attributes a class of sip/message.py declares: its __slots__ when interpreted, the
    list mypyc keeps when compiled (it has no __slots__ then)."""
    return sorted(getattr(cls, "__mypyc_attrs__", None) or cls.__slots__)  # type: ignore[attr-defined]


def same_on_both(data: bytes, **kw: Any) -> tuple[Any, ...]:
    """Parse with each core (each with a fresh cache) and assert the results are the same."""
    reference = outcome(data, "python", ParseCache(), **kw)
    if message.compiled_available():
        compiled = outcome(data, "compiled", ParseCache(), **kw)
        assert compiled == reference, (data, compiled, reference)
    return reference
