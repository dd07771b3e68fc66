"""How a subsystem rides the mesh's control connections (sans-IO), after
weaveworks/mesh's ``Gossiper``.

IPAM, DNS and the fast path each own one message type.  The mesh core knows
none of them: it holds a table ``{message type: channel}`` and, for each
channel,

* when a peer's handshake completes, sends it what ``hello`` returns;
* hands each message of the channel's type to ``receive_untrusted`` (a bad
  one, ``BadPacket``, is counted as ``<name>_errors`` and, when the channel
  says ``close_on_bad``, closes that connection);
* calls ``tick`` with a ``View`` of the mesh twice a second;
* tells it ``peer_down`` (its last connection to a peer closed) and
  ``peer_gone`` (the topology forgot the peer, or the operator removed it);
* after each of these, and whenever the shell asks (``Mesh.flush``), sends
  what ``messages_to_send`` returns: to one peer (``Send``; relayed hop by
  hop, with a route header, when there is no direct connection and the
  channel has a ``relayed`` type) or to every neighbour (``Broadcast``).

A channel never calls the mesh back and is never called while it is
running: what it wants done waits in its outbox until the core drains it.
Adding a message type is a number in ``proto.control.MessageType`` and a
channel in its own package, passed to ``Mesh(channels=...)``.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Send:
    """To one peer: directly, else relayed through the mesh (if the channel relays)."""

    peer: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class Broadcast:
    """To every neighbour but ``but``."""

    payload: bytes
    but: bytes | None = None


Message = Send | Broadcast


@dataclass(frozen=True, slots=True)
class View:
    """What a channel sees of the mesh at a tick."""

    reachable: Set[bytes]  # peers with a route (direct or relayed), and this one
    neighbours: Set[bytes]  # peers with a direct, handshaken connection


class Channel(Protocol):
    @property
    def mtype(self) -> int:
        """Its message type (``proto.control.MessageType``)."""

    @property
    def relayed(self) -> int | None:
        """The type its messages take when relayed (route header first), or None."""

    @property
    def name(self) -> str:
        """For counters: ``<name>_errors``, ``<name>_relayed``, ..."""

    @property
    def what(self) -> str:
        """What its messages are, for logs: ``IPAM message``, ``DNS gossip``."""

    @property
    def close_on_bad(self) -> bool:
        """Whether a malformed message from a neighbour closes its connection."""

    def hello(self, peer: bytes, ip: str, now: float) -> list[bytes]:
        """What a peer whose handshake just completed is sent first (``ip``: its
        underlay address)."""

    def receive_untrusted(self, peer: bytes, payload: bytes, now: float) -> None:
        """A message from ``peer`` (its origin, for a relayed one).  Raises only BadPacket."""

    def tick(self, now: float, view: View) -> None: ...

    def peer_down(self, peer: bytes) -> None:
        """No connection to ``peer`` is left."""

    def peer_gone(self, peer: bytes) -> None:
        """``peer`` left the topology (unreachable too long) or was removed."""

    def messages_to_send(self) -> list[Message]:
        """What it wants sent since the last call (its outbox, emptied)."""


class Outbox:
    """A channel's queue of messages: what ``messages_to_send`` hands over."""

    __slots__ = ("_out",)

    def __init__(self) -> None:
        self._out: list[Message] = []

    def send(self, peer: bytes, payload: bytes) -> None:
        self._out.append(Send(peer, payload))

    def broadcast(self, payload: bytes, but: bytes | None = None) -> None:
        self._out.append(Broadcast(payload, but))

    def take(self) -> list[Message]:
        out, self._out = self._out, []
        return out
