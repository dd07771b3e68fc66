"""What the mesh core asks its shell to do (``Mesh.take_actions``): frozen
values, carried out by the daemon in order.

``Flush`` (a connection has bytes to send), ``Close`` (flush, then end the
connection's task), ``TargetsChanged`` (wake the connection maker), ``LinkUp``
(a link was published: let the forwarder send its first heartbeat now),
``KeysChanged`` (persist the key ring), ``Redial`` (dial an address beside the
connection it has: re-keying it), ``Evicted`` (a revocation: persist it, evict
the peers it names).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Flush:
    index: int


@dataclass(frozen=True, slots=True)
class Close:
    index: int


@dataclass(frozen=True, slots=True)
class TargetsChanged:
    pass


@dataclass(frozen=True, slots=True)
class LinkUp:
    pass


@dataclass(frozen=True, slots=True)
class Redial:
    """Dial ``address`` now, beside the connection it has (re-keying it)."""

    address: str


@dataclass(frozen=True, slots=True)
class KeysChanged:
    """The key ring changed (a rotation adopted, a key retired): persist it."""


@dataclass(frozen=True, slots=True)
class Evicted:
    """A revocation was taken in: persist the revocations; ``names`` are the
    peers it evicts (drop their DNS names, take over their address shares)."""

    names: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Readmitted:
    """An evicted peer name came back with a valid certificate (a re-installed
    host): its DNS names are taken in again."""

    name: bytes


@dataclass(frozen=True, slots=True)
class PasswordRetired:
    """The mesh moved to certificates: persist that the password is refused."""


Action = (
    Flush
    | Close
    | TargetsChanged
    | LinkUp
    | KeysChanged
    | Redial
    | Evicted
    | Readmitted
    | PasswordRetired
)
