# The compiled core (_cmessage.c); the Python code in message.py is the reference.
from collections.abc import Callable
from typing import Any

class Header:
    name: str
    value: str
    start: int
    end: int
    def __init__(self, name: str, value: str, start: int, end: int) -> None: ...

def parse_fast(msg: Any, data: bytes, max_size: int, stream: bool, names: dict[str, str],
               canonical: Callable[[str], str], addresses: set[str],
               check_uri: Callable[[str], None],
               check_addresses: Callable[[Any], None]) -> bool: ...
def via_fields(text: str) -> tuple[str, str, int | None, dict[str, str | None]] | None: ...
