"""The DNS records on the mesh (sans-IO): the ``Records`` CRDT as a mesh channel.

A new peer gets every entry we know; a merge passes on what it changed (to
all but the sender) and what it corrected of our own entries (to all); the
entries of a peer the topology forgot go with it.
"""

from __future__ import annotations

from meshrouter.dns.records import Entry, Records, decode_untrusted, encode_chunks
from meshrouter.mesh.channel import Message, Outbox, View
from meshrouter.proto.control import MessageType


class DnsChannel:
    mtype = MessageType.DNS
    relayed = None
    name = "dns_gossip"
    what = "DNS gossip"
    close_on_bad = True

    def __init__(self, records: Records) -> None:
        self.records = records
        self._out = Outbox()

    # -- the channel ---------------------------------------------------------

    def hello(self, peer: bytes, ip: str, now: float) -> list[bytes]:
        return list(encode_chunks(self.records.all()))

    def receive_untrusted(self, peer: bytes, payload: bytes, now: float) -> None:
        changed, corrections = self.records.merge(decode_untrusted(payload), now)
        self._broadcast(changed, but=peer)
        self._broadcast(corrections)

    def tick(self, now: float, view: View) -> None:
        self.records.expire(now)

    def peer_down(self, peer: bytes) -> None:
        pass

    def peer_gone(self, peer: bytes) -> None:
        self.records.drop_origin(peer)

    def messages_to_send(self) -> list[Message]:
        return self._out.take()

    # -- this peer's names ---------------------------------------------------

    def add(self, container: str, names: list[str], addrs: list[int], now: float) -> int:
        """Register our ``container``'s names (fully qualified, normalised) with
        its addresses, mesh-wide.  Returns how many entries are new."""
        new = [
            e
            for name in names
            for addr in addrs
            if (e := self.records.add(container, name, addr, now)) is not None
        ]
        self._broadcast(new)
        return len(new)

    def remove(
        self, container: str, now: float, *, name: str | None = None, addr: int | None = None
    ) -> int:
        """Withdraw our ``container``'s entries (only ``name``'s / ``addr``'s if given)."""
        gone = self.records.remove(container, now, name=name, addr=addr)
        self._broadcast(gone)
        return len(gone)

    def _broadcast(self, entries: list[Entry], but: bytes | None = None) -> None:
        for chunk in encode_chunks(entries):
            self._out.broadcast(chunk, but)
