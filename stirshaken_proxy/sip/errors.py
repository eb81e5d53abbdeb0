"""Errors raised by the SIP layer, carrying whose fault it is and what to answer."""

from __future__ import annotations

from typing import Any

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    302: "Moved Temporarily",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    428: "Use Identity Header",
    433: "Anonymity Disallowed",
    436: "Bad Identity Info",
    437: "Unsupported Credential",
    438: "Invalid Identity Header",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    487: "Request Terminated",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
    513: "Message Too Large",
}


UNKNOWN_PHRASE = "Unknown"  # of a status not in REASON_PHRASES


def reason_phrase(status: int) -> str:
    return REASON_PHRASES.get(status, UNKNOWN_PHRASE)


class SipError(Exception):
    """A message the peer sent that we cannot process.

    ``status`` is the response to answer with, or None when the message must be dropped
    (a bad response, or a request with no usable Via/CSeq to address an answer to).
    ``detail`` is for logs only; it never goes on the wire.
    """

    def __init__(self, status: int | None, detail: str, *, fatal_stream: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        # True when the byte stream (TCP) can no longer be framed and must be closed.
        self.fatal_stream = fatal_stream
        # The partly parsed message, when there is one, to address an answer to.
        self.message: Any = None

    @property
    def phrase(self) -> str:
        return reason_phrase(self.status) if self.status is not None else ""
