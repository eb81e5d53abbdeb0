# The compiled core's transactions (_cmachine.c). They behave as machine.py's classes of the
# same names (the reference), whose tables bind() hands over; typed through those.
from typing import Any

def bind(state: Any, event: Any, send: Any, udp: Any, no_ack: Any,
         classes: tuple[type, type, type, type], /) -> None: ...

Transaction: Any
ClientTransaction: Any
ServerTransaction: Any
ClientInvite: Any
ClientNonInvite: Any
ServerInvite: Any
ServerNonInvite: Any
