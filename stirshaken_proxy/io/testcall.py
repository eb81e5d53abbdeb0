"""`stirshaken-proxy call`: one test call through a SIP service over UDP, TCP or TLS (answers
a digest challenge when given credentials), printing each response; for operators checking a
listener, a certificate or credentials (Debian's SIPp is built without TLS)."""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..policy.digest import ALGORITHMS, ha1, parse_digest, response
from ..sip.framing import StreamFramer
from ..sip.message import SipMessage, parse_message


class CallError(Exception):
    """The call could not be placed (connection, TLS, timeout): phrased for the operator."""


@dataclass(frozen=True, kw_only=True)
class CallPlan:
    host: str
    port: int
    transport: str  # udp, tcp, tls
    caller: str
    callee: str
    ca_file: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None  # the name the service's certificate must carry
    username: str | None = None
    password: str | None = None
    timeout: float = 10.0


class _Link:
    """Sends requests and yields responses over one socket."""

    def __init__(self, plan: CallPlan) -> None:
        self.plan = plan
        family = socket.AF_INET6 if ":" in plan.host else socket.AF_INET
        kind = socket.SOCK_DGRAM if plan.transport == "udp" else socket.SOCK_STREAM
        self.sock: socket.socket = socket.socket(family, kind)
        self.sock.settimeout(plan.timeout)
        self.framer = StreamFramer(max_size=65535)
        self.queue: list[bytes] = []
        try:
            self.sock.connect((plan.host, plan.port))
            if plan.transport == "tls":
                ctx = ssl.create_default_context(cafile=plan.ca_file)
                ctx.check_hostname = plan.server_name is not None
                if plan.cert:
                    ctx.load_cert_chain(plan.cert, plan.key)
                self.sock = ctx.wrap_socket(self.sock, server_hostname=plan.server_name
                                            or plan.host)
        except ssl.SSLCertVerificationError as exc:
            raise CallError(f"TLS: the service's certificate was refused: "
                            f"{exc.verify_message}") from None
        except (OSError, ssl.SSLError) as exc:
            raise CallError(f"cannot connect to {plan.host}:{plan.port} over "
                            f"{plan.transport.upper()}: {exc}") from None
        self.local = self.sock.getsockname()

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def receive(self) -> SipMessage:
        while not self.queue:
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                raise CallError(f"no answer within {self.plan.timeout:g} s") from None
            if not data:
                raise CallError("the service closed the connection")
            if self.plan.transport == "udp":
                self.queue.append(data)
            else:
                self.queue.extend(m for m in self.framer.feed(data) if m.strip())
        return parse_message(self.queue.pop(0), stream=self.plan.transport != "udp")


def place_call(plan: CallPlan, say: Callable[[str], object]) -> int:
    """Places the call; returns the final status of the INVITE (BYE sent after a 2xx)."""
    link = _Link(plan)
    host = f"[{link.local[0]}]" if ":" in link.local[0] else link.local[0]
    target = f"[{plan.host}]" if ":" in plan.host else plan.host
    local = f"{host}:{link.local[1]}"
    call_id = os.urandom(8).hex() + "@stirshaken-proxy-call"
    tag = os.urandom(4).hex()
    ruri = f"sip:{plan.callee}@{target}:{plan.port}"
    tp = plan.transport.upper()

    def request(method: str, cseq: int, extra: str = "", to_tag: str = "") -> bytes:
        to = f"<sip:{plan.callee}@{target}>" + (f";tag={to_tag}" if to_tag else "")
        return (f"{method} {ruri} SIP/2.0\r\n"
                f"Via: SIP/2.0/{tp} {local};branch=z9hG4bK{os.urandom(6).hex()};rport\r\n"
                f"From: <sip:{plan.caller}@{host}>;tag={tag}\r\nTo: {to}\r\n"
                f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n"
                f"Contact: <sip:call@{local};transport={plan.transport}>\r\n{extra}"
                "Content-Length: 0\r\n\r\n").encode()

    cseq, extra = 1, ""
    while True:
        invite = request("INVITE", cseq, extra)
        link.send(invite)
        while True:
            msg = link.receive()
            say(f"{msg.status} {msg.reason}")
            if msg.status >= 200:
                break
        to_tag = (msg.get("to") or "").partition(";tag=")[2].split(";")[0]
        if msg.status >= 300:  # ACK the failure (same branch, RFC 3261 §17.1.1.3)
            via = invite.split(b"\r\n")[1]
            ack = request("ACK", cseq, to_tag=to_tag).split(b"\r\n")
            ack[1] = via
            link.send(b"\r\n".join(ack))
        if msg.status == 407 and cseq == 1 and plan.username:
            extra = _authorization(msg, plan, ruri)
            cseq = 2
            continue
        break
    if 200 <= msg.status < 300:
        link.send(request("ACK", cseq, to_tag=to_tag))
        time.sleep(0.2)
        link.send(request("BYE", cseq + 1, to_tag=to_tag))
        say(f"BYE: {link.receive().status}")
    return msg.status


def _authorization(challenge: SipMessage, plan: CallPlan, ruri: str) -> str:
    """Proxy-Authorization for the first challenge whose algorithm we know."""
    assert plan.username is not None and plan.password is not None
    for i in challenge.index.get("proxy-authenticate", []):
        p = parse_digest(challenge.headers[i].value)
        if p is None or p.get("algorithm", "MD5") not in ALGORITHMS:
            continue
        algorithm, realm, nonce = p.get("algorithm", "MD5"), p.get("realm", ""), p["nonce"]
        cnonce = os.urandom(8).hex()
        digest = response(algorithm, ha1(algorithm, plan.username, realm, plan.password),
                          nonce=nonce, nc="00000001", cnonce=cnonce, method="INVITE", uri=ruri)
        return (f'Proxy-Authorization: Digest username="{plan.username}", realm="{realm}", '
                f'nonce="{nonce}", uri="{ruri}", response="{digest}", algorithm={algorithm}, '
                f'cnonce="{cnonce}", qop=auth, nc=00000001\r\n')
    raise CallError("407 without a digest challenge this tool can answer")


_TARGET = re.compile(r"\[?([0-9A-Za-z.:-]+?)\]?:(\d{1,5})\Z")


def parse_target(text: str) -> tuple[str, int]:
    m = _TARGET.match(text)
    if m is None:
        raise CallError(f"--target {text!r}: must be host:port ([::1]:5061 for IPv6)")
    return m.group(1), int(m.group(2))


__all__ = ["CallError", "CallPlan", "parse_target", "place_call"]
