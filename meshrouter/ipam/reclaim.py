"""Dead peers' address shares taken over by a quorum (sans-IO).

Weave leaves a dead peer's share of the range owned until an operator runs
``rmpeer``.  Here a peer that has been unreachable for ``after`` seconds is
taken over automatically, safely across partitions:

* The *electorate* is the set of peers owning part of the ring, ``N`` of them.
  A takeover needs a majority ``M = N // 2 + 1`` of them reachable, and is
  made by one actor only: the lowest-named reachable owner.  Two sides of a
  partition cannot both hold a majority, so a minority side never takes over.
* Nothing may be lost when the "dead" peer comes back (it may only have been
  cut off).  So every peer gossips the set of addresses its containers hold
  and, as an owner, has handed out (``ALLOCS``, versioned), and the
  taker-over keeps each of them reserved for the same container.  The
  returning peer finds its share gone and claims each of its addresses from
  the new owner, which grants them because the reservation bears the same
  container.  Any newer set tells the owners which addresses held for that
  peer's containers it no longer needs (removed while it was cut off, or a
  RELEASE that could not get through).
* For that to hold, the taker-over must know *every* allocation of the peer
  it takes over.  An owner therefore hands out a new address only once
  ``N - M`` other owners have acknowledged the set that contains it: any
  majority without the allocator then includes one of them (``N - M`` ackers
  plus ``M`` takers exceed the ``N - 1`` others), and gossip within that side
  brings the set to the actor long before ``after`` runs out.  With one or two
  owners no acknowledgement is needed (a single survivor can never be a
  majority of two), so small meshes allocate as before.  A peer cut off from
  too many owners cannot hand out new addresses (it could be taken over meanwhile);
  with ``after == 0`` automatic takeover is off and so is this rule.

Wire format (more IPAM message kinds, after those in ``ipam``)::

    ALLOCS      kind=6 owner(6) version(u32) count(u16) count x [addr(u32) len(u8) ident]
    ALLOCS_ACK  kind=7 owner(6) version(u32)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from meshrouter.base.errors import BadPacket
from meshrouter.base.names import format_name

ALLOCS, ALLOCS_ACK = 6, 7

_HEAD = struct.Struct("!B6sIH")
_ENTRY = struct.Struct("!IB")
_ACK = struct.Struct("!B6sI")
MAX_IDENT = 200


def majority(owners: int) -> int:
    return owners // 2 + 1


def acks_needed(owners: int) -> int:
    """Other owners that must know of an allocation before it is handed out
    (the allocator being one of ``owners``)."""
    return max(0, owners - majority(owners))


@dataclass(frozen=True, slots=True)
class AllocSet:
    owner: bytes
    version: int
    allocs: dict[int, str]  # address -> container ident


def encode_allocs(owner: bytes, version: int, allocs: dict[int, str]) -> bytes:
    out = bytearray(_HEAD.pack(ALLOCS, owner, version, min(len(allocs), 0xFFFF)))
    for addr in sorted(allocs)[:0xFFFF]:
        raw = allocs[addr].encode()[:MAX_IDENT]
        out += _ENTRY.pack(addr, len(raw)) + raw
    return bytes(out)


def encode_ack(owner: bytes, version: int) -> bytes:
    return _ACK.pack(ALLOCS_ACK, owner, version)


def decode_allocs_untrusted(payload: bytes) -> AllocSet:
    """Parse an ALLOCS message.  Raises only BadPacket."""
    try:
        kind, owner, version, count = _HEAD.unpack_from(payload)
        if kind != ALLOCS:
            raise BadPacket("not an allocation set")
        pos = _HEAD.size
        allocs: dict[int, str] = {}
        for _ in range(count):
            addr, n = _ENTRY.unpack_from(payload, pos)
            pos += _ENTRY.size
            if pos + n > len(payload):
                raise BadPacket("allocation set cut short")
            allocs[addr] = payload[pos : pos + n].decode()
            pos += n
    except (struct.error, UnicodeDecodeError) as exc:
        raise BadPacket(f"malformed allocation set: {exc}") from exc
    if pos != len(payload):
        raise BadPacket("allocation set with trailing bytes")
    return AllocSet(owner, version, allocs)


def decode_ack_untrusted(payload: bytes) -> tuple[bytes, int]:
    try:
        kind, owner, version = _ACK.unpack(payload)
    except struct.error as exc:
        raise BadPacket(f"malformed allocation ack: {exc}") from exc
    if kind != ALLOCS_ACK:
        raise BadPacket("not an allocation ack")
    return owner, version


@dataclass
class Reclaimer:
    """What this peer knows of others' allocations, who acknowledged ours,
    and how long each owner has been out of reach."""

    me: bytes
    after: float  # seconds unreachable before a takeover; 0: never (only rmpeer)
    version: int = 0  # of our own allocation set
    known: dict[bytes, AllocSet] = field(default_factory=dict)
    acked: dict[bytes, int] = field(default_factory=dict)  # peer -> our version it has
    unreachable_since: dict[bytes, float] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.after > 0

    # -- our own set ------------------------------------------------------------

    def bump(self) -> int:
        """Our allocations changed: the new version of our set."""
        self.version += 1
        return self.version

    def needed(self, owners: set[bytes]) -> int:
        if not self.enabled:
            return 0
        return acks_needed(len(owners | {self.me}))

    def acked_by(self, version: int, owners: set[bytes]) -> int:
        return sum(1 for p in owners if p != self.me and self.acked.get(p, -1) >= version)

    def recorded(self, version: int, owners: set[bytes]) -> bool:
        """Enough other owners know of our set ``version`` for it to be used."""
        return self.acked_by(version, owners) >= self.needed(owners)

    def can_record(self, owners: set[bytes], reachable: set[bytes]) -> bool:
        """Enough other owners are reachable to acknowledge a new allocation."""
        return len((owners & reachable) - {self.me}) >= self.needed(owners)

    def on_ack(self, peer: bytes, owner: bytes, version: int) -> bool:
        """An ack from ``peer``; True if it acknowledged something new of ours."""
        if owner != self.me or version > self.version or version <= self.acked.get(peer, -1):
            return False
        self.acked[peer] = version
        return True

    # -- others' sets ---------------------------------------------------------------

    def merge(self, received: AllocSet) -> bool:
        """Keep ``received`` if newer than what we had; True if so (pass it on)."""
        if received.owner == self.me:
            return False
        cur = self.known.get(received.owner)
        if cur is not None and cur.version >= received.version:
            return False
        self.known[received.owner] = received
        return True

    def should_ack(self, received: AllocSet, sender: bytes, changed: bool) -> bool:
        """Ack what was news to us, and anything its owner sent us itself (a
        resend: our first ack may have been lost)."""
        cur = self.known.get(received.owner)
        return received.owner != self.me and (
            changed or (sender == received.owner and cur is not None and cur == received)
        )

    # -- takeovers ----------------------------------------------------------------------

    def observe(self, now: float, owners: set[bytes], reachable: set[bytes]) -> list[bytes]:
        """Note who is out of reach; the owners this peer should take over now."""
        for p in owners:
            if p in reachable or p == self.me:
                self.unreachable_since.pop(p, None)
            else:
                self.unreachable_since.setdefault(p, now)
        for p in list(self.unreachable_since):
            if p not in owners:
                del self.unreachable_since[p]
        if not self.enabled or self.me not in owners:
            return []
        present = owners & (reachable | {self.me})
        if len(present) < majority(len(owners)) or min(present) != self.me:
            return []
        return sorted(p for p, since in self.unreachable_since.items() if now - since >= self.after)

    def handed_out_by(self, peer: bytes) -> dict[int, str]:
        """The addresses ``peer`` handed out, as far as we know."""
        known = self.known.get(peer)
        return {} if known is None else dict(known.allocs)

    @staticmethod
    def stale(received: AllocSet, held: dict[int, str]) -> list[int]:
        """Of the addresses we ``held`` for containers of ``received.owner``,
        those its newer set no longer lists: released while a RELEASE could
        not reach us, or reserved at a takeover for containers removed
        meanwhile.  (A peer lists its claims from the moment it sends them, so
        a set never lacks a claim we have granted.)"""
        prefix = format_name(received.owner) + "/"
        return [
            addr
            for addr, ident in held.items()
            if ident.startswith(prefix) and received.allocs.get(addr) != ident
        ]

    def forget(self, peer: bytes) -> None:
        self.known.pop(peer, None)
        self.acked.pop(peer, None)
        self.unreachable_since.pop(peer, None)
