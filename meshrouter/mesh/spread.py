"""Which topology records go to which neighbour, and when (sans-IO).

``topology.Gossip`` holds the view and merges what comes in; this decides
what to send, so that a mesh of N routers costs O(N) messages per change,
not O(N^2), and stays quiet when nothing changes:

* **Coalesced, per neighbour**: a change marks record names pending for
  each neighbour; at most one message goes to a neighbour every
  ``spacing`` seconds, carrying the latest version of every record pending
  for it (the first at once).  A storm of changes costs a neighbour two
  messages a second, whatever its size.
* **Not to who has it**: a record newly learnt is passed on to the
  neighbours its origin is not connected to itself (the origin sends its
  own record to each of its peers), never back to the sender or to the
  origin.  In a full mesh a change is one message to each peer, nothing
  relayed.
* **Digests for anti-entropy**: when a connection comes up and every
  ``interval`` seconds, each side sends a digest (name, uid, version of
  every record it holds, 22 bytes each) instead of its whole view; the
  other side answers with the records the digest lacks or holds older.
  Both sides send one, so each pushes what the other lacks.  A digest
  naming our own record from an earlier life (a restart) makes us jump
  above it.  Peers of protocol v1 do not know digests: they get the whole
  view, as before.

Wire format of a DIGEST gossip payload (``topology.DIGEST``)::

    kind=2 (u8) | count (u16) | count x (name(6) uid(u64) version(u64))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from meshrouter.mesh.topology import DIGEST, Gossip

GOSSIP_SPACING = 0.5  # seconds between topology messages to one neighbour
ANTI_ENTROPY_INTERVAL = 30.0  # seconds between digests (whole views to v1 peers)


@dataclass
class _Neighbour:
    digests: bool  # speaks digests (protocol v2)
    pending: set[bytes] = field(default_factory=set)  # record names to send it
    full: bool = False  # a whole view is due (a v1 neighbour)
    digest: bool = False  # a digest is due
    sent_at: float = -math.inf

    def wants(self) -> bool:
        return bool(self.pending) or self.full or self.digest


class Spreader:
    def __init__(
        self,
        gossip: Gossip,
        now: float,
        *,
        spacing: float = GOSSIP_SPACING,
        interval: float = ANTI_ENTROPY_INTERVAL,
    ) -> None:
        self.g = gossip
        self.spacing = spacing
        self.interval = interval
        self.next_round = now + interval
        self.nb: dict[bytes, _Neighbour] = {}
        self.messages_sent = 0
        self.bytes_sent = 0
        self._quiet_until = -math.inf  # nothing is due before then (unless marked since)

    # -- neighbours -------------------------------------------------------------

    def neighbour_up(self, peer: bytes, *, digests: bool) -> None:
        """A new neighbour: it gets a digest (v2) or our whole view (v1) at once."""
        n = self.nb[peer] = _Neighbour(digests)
        self._quiet_until = -math.inf
        if digests:
            n.digest = True
            n.pending.add(self.g.me)  # our record is news to it (or will be soon)
        else:
            n.full = True

    def neighbour_down(self, peer: bytes) -> None:
        self.nb.pop(peer, None)

    def own_changed(self) -> None:
        """Our own record changed: every neighbour gets it."""
        self._quiet_until = -math.inf
        for n in self.nb.values():
            n.pending.add(self.g.me)

    # -- input ------------------------------------------------------------------

    def receive_untrusted(self, sender: bytes, payload: bytes) -> bool:
        """A gossip payload from neighbour ``sender``; whether our view
        changed.  Raises only BadPacket."""
        self._quiet_until = -math.inf
        if payload[:1] == bytes([DIGEST]):
            lacking, jumped = self.g.receive_digest_untrusted(payload)
            n = self.nb.get(sender)
            if n is not None:
                n.pending.update(lacking)
            if jumped:
                self.own_changed()
            return jumped
        won = self.g.receive_records_untrusted(payload)
        for rec in won:
            if rec.name == self.g.me:  # we jumped above a record of an earlier life
                self.own_changed()
                continue
            has_it = {c.peer for c in rec.connections} | {sender, rec.name}
            for peer, n in self.nb.items():
                if peer not in has_it:
                    n.pending.add(rec.name)
        return bool(won)

    # -- output -----------------------------------------------------------------

    def due(self, now: float) -> list[tuple[bytes, bytes]]:
        """The (neighbour, payload) pairs to send now."""
        if now >= self.next_round:
            self.next_round = now + self.interval
            for n in self.nb.values():
                if n.digests:
                    n.digest = True
                else:
                    n.full = True
        out: list[tuple[bytes, bytes]] = []
        if now < self._quiet_until:
            return out
        cache: dict[frozenset[bytes], bytes] = {}  # neighbours often want the same records
        digest: bytes | None = None
        for peer, n in self.nb.items():
            if not n.wants() or now < n.sent_at + self.spacing:
                continue
            n.sent_at = now
            if n.full:
                out.append((peer, self.g.encode(self.g.records.values())))
            elif n.pending:
                key = frozenset(n.pending)
                if key not in cache:
                    recs = [self.g.records[x] for x in sorted(key) if x in self.g.records]
                    cache[key] = self.g.encode(recs) if recs else b""
                if cache[key]:
                    out.append((peer, cache[key]))
            if n.digest:
                digest = digest if digest is not None else self.g.digest()
                out.append((peer, digest))
            n.pending.clear()
            n.full = n.digest = False
        for _, payload in out:
            self.messages_sent += 1
            self.bytes_sent += len(payload)
        self._quiet_until = self.next_deadline()  # called on every event: mostly a no-op
        return out

    def next_deadline(self) -> float:
        """When ``due`` next has something to send."""
        at = self.next_round
        for n in self.nb.values():
            if n.wants():
                at = min(at, n.sent_at + self.spacing)
        return at
