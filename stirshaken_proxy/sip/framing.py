"""Content-Length framing of SIP over a byte stream (RFC 3261 §18.3), with keep-alives.

The framer is pure: ``feed`` returns the complete messages found so far. A double CRLF
between messages is a keep-alive ping (RFC 5626 §3.5.1) that is answered with one CRLF.
"""

from __future__ import annotations

import re

from .errors import SipError

_CL_RE = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)

PING = b"\r\n\r\n"
PONG = b"\r\n"


class StreamFramer:
    __slots__ = ("_buf", "max_size")

    def __init__(self, *, max_size: int) -> None:
        self._buf = bytearray()
        self.max_size = max_size

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return complete items: messages, or PING for a keep-alive.

        Raises SipError with ``fatal_stream`` set when the stream cannot be framed any more
        (the connection must then be closed).
        """
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            if buf[0] in (13, 10):  # CR or LF
                if len(buf) < 4 and PING.startswith(buf):
                    break  # may still become a keep-alive
                if buf.startswith(PING):
                    del buf[:4]
                    out.append(PING)
                elif buf.startswith(b"\r\n"):
                    del buf[:2]  # CRLF before a message is ignored (RFC 3261 §7.5)
                else:
                    del buf[:1]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_size:
                    raise SipError(513, "header section larger than max_message_size",
                                   fatal_stream=True)
                break
            head = bytes(buf[:end])
            lengths = _CL_RE.findall(head)
            if len(lengths) != 1:
                raise SipError(400, "stream message needs exactly one Content-Length",
                               fatal_stream=True)
            text = lengths[0].strip()
            if not text.isdigit():
                raise SipError(400, "malformed Content-Length", fatal_stream=True)
            total = end + 4 + int(text)
            if total > self.max_size:
                raise SipError(513, "message larger than max_message_size", fatal_stream=True)
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out
