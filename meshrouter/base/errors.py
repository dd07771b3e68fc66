"""The project's error types.

Following h11, we separate misuse by the local caller (``LocalProtocolError``)
from misbehaviour of the remote side (``RemoteProtocolError``).  Every function
that parses bytes read from the network raises nothing but ``BadPacket`` (a
subclass of ``RemoteProtocolError``); receive loops catch it, count the drop
and keep running.
"""


class MeshError(Exception):
    """Base class of every error meshrouter raises on purpose."""


class LocalProtocolError(MeshError):
    """The local code asked the protocol core to do something invalid."""


class RemoteProtocolError(MeshError):
    """The remote peer broke the protocol; the connection must be closed."""


class BadPacket(RemoteProtocolError):
    """Bytes read from the network could not be parsed or authenticated.

    ``reason`` is the drop reason it is counted under: one of a fixed set of
    snake_case names (``link.DROP_REASONS``), so that garbage cannot make new
    metric series; the message, which may name values, is the detail for the
    (rate-limited) log."""

    def __init__(self, message: str, reason: str = "bad_packet") -> None:
        super().__init__(message)
        self.reason = reason


class HandshakeRefused(RemoteProtocolError):
    """The handshake failed for a reason worth telling the operator.

    ``reason`` is a short human sentence ("wrong password?", "incompatible
    protocol version ...").
    """

    def __init__(self, reason: str, *, tell_peer: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        # True when the peer should be sent a REJECT frame carrying the reason
        # (version or suite mismatch); False when telling would help an
        # attacker or the peer already knows (authentication failure).
        self.tell_peer = tell_peer


class OperatorError(MeshError, ValueError):
    """An operator's request the router refuses; the message is one line for the
    operator (what was wrong, what to do).  A ValueError: every server answers
    it as that request's error."""


class IpamError(OperatorError):
    """An address request that cannot be met."""


class BadInput(MeshError, ValueError):
    """Input from an operator, a local client or a file that cannot be used
    (a malformed request, a host name that is no name, a JSON body nested too
    deep).  The message is one line naming what was wrong; the request it
    came with is refused and nothing else is affected.  A ``ValueError`` too,
    so that every boundary that refuses bad values refuses these."""
