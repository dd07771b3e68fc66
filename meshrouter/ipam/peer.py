"""This peer's IPAM, sans-IO: every decision, none of the waiting.

``IpamPeer`` is the mesh channel of IPAM (``mesh.channel``) and what the trio
service (``service``) asks on behalf of the API.  It takes messages, time
(``now``), the mesh's view and the set of containers whose namespace has
vanished; it gives back messages (its outbox, drained by the mesh core), a
``version`` that moves whenever the state to persist changed (the service
saves then), a ``changes`` count that moves whenever an API call waiting for
the mesh may go on, and the releases the DNS must follow (``take_released``).

What it decides, after weave's ``ipam/`` operations:

* the ring: made among the initial peers at quorum, merged from peers;
* allocation in our share, donations asked of neighbours first, else of any
  reachable owner (relayed: under --conn-limit the owners may be far);
* claims: in our share (answered once enough other owners recorded them, see
  ``reclaim``) and in another owner's (a request, resent until answered);
* takeover of a peer unreachable for ``--reclaim-after`` (``Reclaimer``);
* re-homing: our containers' addresses in space another peer now owns are
  claimed from it (our share was taken over while we were cut off).
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshrouter.base.errors import BadPacket
from meshrouter.base.names import format_name
from meshrouter.ipam.reclaim import (
    ALLOCS,
    ALLOCS_ACK,
    AllocSet,
    Reclaimer,
    encode_ack,
    encode_allocs,
)
from meshrouter.ipam.rehome import CLAIM_RESEND, Rehomer
from meshrouter.ipam.requests import Requests
from meshrouter.ipam.ring import (
    CLAIM,
    CLAIM_OK,
    CLAIM_REPLY,
    CLAIM_TAKEN,
    DONATE,
    RELEASE,
    RING,
    Ipam,
    decode_untrusted,
    encode_claim,
    encode_claim_reply,
    encode_ring,
)
from meshrouter.mesh.channel import Message, Outbox, View
from meshrouter.proto.control import MessageType

log = logging.getLogger("meshrouter.ipam")

__all__ = ["CLAIM_RESEND", "RECLAIM_AFTER", "RECORD_TIMEOUT", "IpamPeer", "PendingReply"]

RECORD_TIMEOUT = 10.0  # for other owners to acknowledge a new allocation
ALLOCS_INTERVAL = 30.0  # our allocation set is sent again this often (anti-entropy)
RING_INTERVAL = 30.0  # and the ring
RECLAIM_AFTER = 1800.0  # default: a peer unreachable this long is taken over


@dataclass
class PendingReply:
    """A claim granted in our share, answered once other owners recorded it."""

    sender: bytes
    request: int
    addr: int
    ident: str
    version: int
    deadline: float


class IpamPeer:
    mtype = MessageType.IPAM
    relayed = MessageType.IPAM_RELAYED
    name = "ipam"
    what = "IPAM message"
    close_on_bad = True

    def __init__(
        self, me: bytes, cidr: str, init_count: int, reclaim_after: float = RECLAIM_AFTER
    ) -> None:
        self.me = me
        self.core = Ipam(me, cidr, init_count=init_count)
        self.reclaimer = Reclaimer(me, reclaim_after)
        self.remote: dict[str, list[tuple[bytes, int]]] = {}  # our claims in others' shares
        self.remote_ns: dict[str, str] = {}  # ... and their containers' namespaces
        self.changes = 0  # moves when a waiting API call may go on
        self.out = Outbox()
        self.claiming: dict[int, tuple[int, str]] = {}  # request -> (addr, ident)
        self.answers: dict[int, tuple[int, str]] = {}  # request -> (status, msg)
        self._published: dict[int, str] = {}
        self.reachable: set[bytes] = {me}
        self._neighbours: set[bytes] = set()
        self._pending: list[PendingReply] = []
        self._next_allocs = 0.0
        self._next_ring = RING_INTERVAL
        self.request_ids = itertools.count(1)
        self._released: list[tuple[str, list[int] | None]] = []
        self.requests = Requests(self)
        self.rehoming = Rehomer(self)

    def restored(
        self, remote: dict[str, list[tuple[bytes, int]]], remote_ns: dict[str, str]
    ) -> None:
        """The claims of an earlier run (``core`` and ``reclaimer`` were loaded in place)."""
        self.remote, self.remote_ns = remote, remote_ns
        self._published = self._holdings()

    # -- state and change ---------------------------------------------------

    @property
    def version(self) -> int:
        """Moves whenever what the store keeps changed."""
        return self.core.version

    def _holdings(self) -> dict[int, str]:
        """Our ALLOCS set: what we handed out and what our containers claimed
        in others' shares."""
        held = self.core.handed_out()
        for ident, claims in self.remote.items():
            for _, addr in claims:
                held[addr] = ident
        for addr, ident in self.claiming.values():  # listed before they are sent
            held[addr] = ident
        return held

    def bump(self) -> None:
        self.core.version += 1

    def commit(self) -> None:
        held = self._holdings()
        if held != self._published:  # others must learn of it (see ``reclaim``)
            self._published = held
            self.reclaimer.bump()
            self.bump()
            self.out.broadcast(self._allocs_payload())
        self.changes += 1

    def _allocs_payload(self) -> bytes:
        return encode_allocs(self.me, self.reclaimer.version, self._published)

    def release_if_held(self, addr: int, ident: str) -> bool:
        held = self.core.allocs.get(addr)
        if held is not None and held.ident == ident:
            self.core.release_addr(addr)
            return True
        return False

    def broadcast_ring(self, but: bytes | None = None) -> None:
        self.out.broadcast(encode_ring(self.core.tokens), but)

    def take_released(self) -> list[tuple[str, list[int] | None]]:
        """Each release since the last call: the container, and which addresses
        (None: all of them)."""
        out, self._released = self._released, []
        return out

    def owners(self) -> set[bytes]:
        return {t.owner for t in self.core.tokens.values()}

    def can_reach(self, peer: bytes) -> bool:
        return peer in self._neighbours or peer in self.reachable

    @property
    def neighbours(self) -> set[bytes]:
        return set(self._neighbours)

    # -- the channel ---------------------------------------------------------

    def hello(self, peer: bytes, ip: str, now: float) -> list[bytes]:
        """For a new connection: the ring, our allocation set and those we know."""
        self._neighbours.add(peer)
        if not self.core.ready:
            return []
        sets = [encode_allocs(k.owner, k.version, k.allocs) for k in self.reclaimer.known.values()]
        return [encode_ring(self.core.tokens), self._allocs_payload(), *sets]

    def peer_down(self, peer: bytes) -> None:
        self._neighbours.discard(peer)

    def peer_gone(self, peer: bytes) -> None:
        pass  # a share is taken over by ``Reclaimer``'s rules, not by the topology's GC

    def peer_evicted(self, peer: bytes) -> None:
        """Its certificate was revoked: it is never coming back, so its share is
        taken over as soon as it is out of reach (by the usual majority rule),
        not ``reclaim_after`` later."""
        self.reclaimer.unreachable_since[peer] = -math.inf

    def messages_to_send(self) -> list[Message]:
        return self.out.take()

    def receive_untrusted(self, peer: bytes, payload: bytes, now: float) -> None:
        """An IPAM message from ``peer``.  Raises only BadPacket."""
        kind, value = decode_untrusted(payload)
        handler = HANDLERS.get(kind)
        if handler is None:  # pragma: no cover - decode_untrusted knows no other kinds
            raise BadPacket("unknown IPAM message")
        handler(self, peer, value, payload, now)

    def tick(self, now: float, view: View) -> None:
        if view.reachable != self.reachable:
            self.reachable = set(view.reachable)
            self.changes += 1  # a wait for owners to record an allocation may go on
        self._neighbours = set(view.neighbours)
        ring = self.core.maybe_init(self.reachable, now)
        if ring is not None:
            log.info(
                "made the address ring for %s among %d peer(s)",
                self.core.network,
                len(self.reachable),
            )
            self.commit()
            self.out.broadcast(ring)
        if self.core.ready:
            self.rehoming.take_over_dead(now)
            if now >= self._next_allocs:
                self._next_allocs = now + ALLOCS_INTERVAL
                self.out.broadcast(self._allocs_payload())
            if now >= self._next_ring:
                self._next_ring = now + RING_INTERVAL
                self.broadcast_ring()
            self.rehoming.tick(now)
        if self._pending:
            self._settle(now)

    # -- recording allocations with other owners ---------------------------------

    def _recorded(self, version: int | None = None) -> bool:
        v = self.reclaimer.version if version is None else version
        return self.reclaimer.recorded(v, self.owners())

    def recorded_since(self, version: int) -> bool:
        return self._recorded(version)

    def can_record(self) -> bool:
        return self.reclaimer.can_record(self.owners(), self.reachable)

    def _settle(self, now: float) -> None:
        """Answer the claims other owners have now recorded; refuse those they
        did not record in time."""
        waiting: list[PendingReply] = []
        for p in self._pending:
            if self._recorded(p.version):
                self.out.send(p.sender, encode_claim_reply(p.request, CLAIM_OK, ""))
            elif now >= p.deadline:
                self.release_if_held(p.addr, p.ident)
                self.out.send(
                    p.sender,
                    encode_claim_reply(p.request, CLAIM_TAKEN, self.unrecorded_reason()),
                )
            else:
                waiting.append(p)
        self._pending = waiting

    def unrecorded_reason(self) -> str:
        owners = self.owners() | {self.me}
        reach = len(owners & (self.reachable | {self.me}))
        return (
            f"peer {format_name(self.me)} reaches {reach} of {len(owners)} address owners; "
            f"a new address needs {self.reclaimer.needed(owners)} other owner(s) to record "
            "it, so that it survives a takeover (--reclaim-after): wait for the mesh to "
            "reconnect, or run the routers with --reclaim-after 0"
        )

    def not_ready_reason(self) -> str:
        return (
            f"the mesh has not agreed on address ownership yet: it needs "
            f"{self.core.quorum} of {self.core.init_count} initial peers connected "
            "(see 'mesh status peers'; --ipalloc-init sets how many)"
        )

    def unrecorded(self, addr: int, ident: str) -> str:
        """Other owners did not record our allocation of ``addr`` in time: let it go."""
        if self.release_if_held(addr, ident):
            self.commit()
        return self.unrecorded_reason()

    def resend_ring(self) -> None:
        """The ring to every neighbour now (anti-entropy before its interval)."""
        if self.core.ready:
            self.broadcast_ring()

    def resend_allocs(self) -> None:
        self.out.broadcast(self._allocs_payload())

    # -- takeovers and re-homing -------------------------------------------------

    def drop_remote(self, ident: str, addr: int) -> None:
        kept = [(o, a) for o, a in self.remote.get(ident, []) if a != addr]
        if kept:
            self.remote[ident] = kept
        else:
            self.remote.pop(ident, None)
        self.bump()

    # -- containers whose namespace vanished --------------------------------------

    def watched(self) -> dict[str, str]:
        """The namespace of each container holding an address (ident -> path;
        those the router cannot see are not listed)."""
        out = {a.ident: a.ns_path for a in self.core.allocs.values() if a.ns_path}
        out.update({i: p for i, p in self.remote_ns.items() if p})
        return out

    def containers_gone(self, idents: set[str]) -> None:
        """These containers' namespaces are gone: release their addresses."""
        for ident in sorted(idents):
            log.info("container %s is gone: releasing its address", ident)
            self.release_all(ident)
        if idents:
            self.commit()

    # -- the API's steps -----------------------------------------------------------

    def release_all(self, ident: str) -> list[str]:
        self._released.append((ident, None))
        gone = [str(ipaddress.IPv4Address(a)) for a in self.core.release(ident)]
        self.remote_ns.pop(ident, None)
        for owner, addr in self.remote.pop(ident, []):
            self._send_release(owner, addr, ident)
            gone.append(str(ipaddress.IPv4Address(addr)))
            self.bump()
        return gone

    def _send_release(self, owner: bytes, addr: int, ident: str) -> None:
        """RELEASE a claim of ours, to whoever owns the address now (``owner``
        claimed it for us; its share may have been taken over since)."""
        owner = self.core.owner_of(addr) or owner
        self.out.send(owner, encode_claim(0, addr, ident, RELEASE))

    def release_some(self, ident: str, which: set[int]) -> list[str]:
        released = [addr for addr in sorted(which) if self.release_if_held(addr, ident)]
        had_claims = ident in self.remote
        for owner, addr in list(self.remote.get(ident, [])):
            if addr in which:
                self._send_release(owner, addr, ident)
                self.drop_remote(ident, addr)
                released.append(addr)
        gone = had_claims and ident not in self.remote
        if gone and not any(a.ident == ident for a in self.core.allocs.values()):
            self.remote_ns.pop(ident, None)
        if released:
            self._released.append((ident, released))
        return [str(ipaddress.IPv4Address(a)) for a in released]

    # -- status ------------------------------------------------------------------


# -- the messages --------------------------------------------------------------


def _on_ring(self: IpamPeer, sender: bytes, value: Any, payload: bytes, now: float) -> None:
    assert isinstance(value, dict)
    if self.core.merge(value):
        self.rehoming.rehome()
        self.commit()
        self.broadcast_ring(but=sender)


def _on_donate(self: IpamPeer, sender: bytes, value: Any, payload: bytes, now: float) -> None:
    start, prefix = value
    subnet = ipaddress.IPv4Network((start, prefix)) if prefix else None
    ring = self.core.donate(sender, subnet)
    if ring is not None:
        log.info("gave part of our address share to %s", format_name(sender))
        self.commit()
        self.out.broadcast(ring)


def _on_claim(self: IpamPeer, sender: bytes, value: Any, payload: bytes, now: float) -> None:
    request, addr, ident = value
    status = self.core.claim(addr, ident)
    msg = ""
    if status != CLAIM_OK:
        holder = self.core.allocs.get(addr)
        msg = f"in use by {holder.ident}" if holder else "not ours to give"
    self.commit()
    if status == CLAIM_OK and not self._recorded():
        # Granted once enough other owners know of it (see ``reclaim``).
        self._pending.append(
            PendingReply(sender, request, addr, ident, self.reclaimer.version, now + RECORD_TIMEOUT)
        )
        return
    self.out.send(sender, encode_claim_reply(request, status, msg))


def _on_claim_reply(self: IpamPeer, sender: bytes, value: Any, payload: bytes, now: float) -> None:
    request, status, msg = value
    if request in self.rehoming.pending:
        self.rehoming.answered(self.rehoming.pending.pop(request), status, msg)
    elif request in self.claiming and request not in self.answers:
        self.answers[request] = (status, msg)
        self.changes += 1


def _on_release(self: IpamPeer, sender: bytes, value: Any, payload: bytes, now: float) -> None:
    _, addr, ident = value
    if self.release_if_held(addr, ident):
        self.commit()


def _on_allocs(self: IpamPeer, sender: bytes, value: Any, payload: bytes, now: float) -> None:
    assert isinstance(value, AllocSet)
    changed = self.reclaimer.merge(value)
    if changed:
        for addr in self.reclaimer.stale(value, self.core.handed_out()):
            self.core.release_addr(addr)  # its holder no longer needs it
        self.bump()  # saved with the rest
        self.commit()
        self.out.broadcast(payload, sender)
    if self.reclaimer.should_ack(value, sender, changed):
        self.out.send(value.owner, encode_ack(value.owner, value.version))


def _on_allocs_ack(self: IpamPeer, sender: bytes, value: Any, payload: bytes, now: float) -> None:
    owner, version = value
    if self.reclaimer.on_ack(sender, owner, version):
        self._settle(now)
        self.commit()


# IPAM's message kinds and what each does to the peer.
HANDLERS: dict[int, Callable[[IpamPeer, bytes, Any, bytes, float], None]] = {
    RING: _on_ring,
    DONATE: _on_donate,
    CLAIM: _on_claim,
    CLAIM_REPLY: _on_claim_reply,
    RELEASE: _on_release,
    ALLOCS: _on_allocs,
    ALLOCS_ACK: _on_allocs_ack,
}
