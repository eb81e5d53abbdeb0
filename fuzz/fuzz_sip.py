"""Coverage-guided fuzzing (atheris/libFuzzer) of the SIP parser and the Identity parsers.

    .venv/bin/python fuzz/fuzz_sip.py -runs=1000000 CORPUS_DIR   # seed it with tests/data/rfc4475

Fails (with the input saved by libFuzzer) when an exception other than the parsers' own
escapes, or when parse -> serialise -> parse is not stable for a message that parses.
"""

from __future__ import annotations

import os
import sys

import atheris

# atheris instruments Python bytecode: the modules setup.py compiles with mypyc have none, so
# they are imported from their source (STIRSHAKEN_CORE=python does only that here; the C
# parser is still chosen by message.use_core).
os.environ["STIRSHAKEN_CORE"] = "python"
with atheris.instrument_imports():
    from stirshaken_proxy.sip.errors import SipError
    from stirshaken_proxy.sip.message import parse_message
    from stirshaken_proxy.stir.passport import PassportError, decode_passport
    from stirshaken_proxy.stir.verify import parse_identity


def one_input(data: bytes) -> None:
    try:
        msg = parse_message(data, max_size=16384)
    except SipError:
        pass
    else:
        out = msg.serialize()
        again = parse_message(out, max_size=len(out) + 1)
        if again.serialize() != out:
            raise AssertionError("serialise is not stable")
        for value in msg.get_all("identity"):
            try:
                parse_identity(value)
                decode_passport(value.split(";")[0])
            except (ValueError, PassportError):
                pass
    text = data.decode("latin-1")
    try:
        parse_identity(text)
    except ValueError:
        pass
    try:
        decode_passport(text)
    except PassportError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
