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
    """Bytes read from the network could not be parsed or authenticated."""


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


class IpamError(MeshError):
    """An address request that cannot be met; the message is one line for the operator."""
