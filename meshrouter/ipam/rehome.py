"""Takeovers and re-homing (sans-IO), for ``IpamPeer``.

A peer unreachable for ``--reclaim-after`` has its share taken over by a
quorum (``Reclaimer`` decides who and when; the addresses its containers
held are kept for them).  When this peer's own share was taken over while it
was cut off, or two rings were made, each of our containers' addresses in
space another peer now owns is claimed from that owner, which kept it
reserved for the same container: re-homed, resent until answered.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshrouter.base.names import format_name
from meshrouter.ipam.ring import CLAIM_NOT_OWNER, CLAIM_OK, encode_claim

if TYPE_CHECKING:
    from meshrouter.ipam.peer import IpamPeer

log = logging.getLogger("meshrouter.ipam")

CLAIM_RESEND = 2.0


@dataclass
class Rehoming:
    """One of our addresses in space now owned by another peer, being claimed there."""

    ident: str
    addr: int
    owner: bytes
    ns_path: str


class Rehomer:
    def __init__(self, peer: IpamPeer) -> None:
        self.p = peer
        self.pending: dict[int, Rehoming] = {}  # request -> what it claims
        self._next = 0.0

    def tick(self, now: float) -> None:
        """Claims not answered yet go again every CLAIM_RESEND."""
        if self.pending and now >= self._next:
            self._next = now + CLAIM_RESEND
            for request, r in list(self.pending.items()):
                self.p.out.send(r.owner, encode_claim(request, r.addr, r.ident))

    def take_over_dead(self, now: float) -> None:
        owners = self.p.owners()
        for peer in self.p.reclaimer.observe(now, owners, self.p.reachable):
            since = self.p.reclaimer.unreachable_since[peer]
            ranges, kept = self.p.core.take_over(peer, self.p.reclaimer.handed_out_by(peer))
            if not ranges:
                continue
            log.warning(
                "peer %s unreachable for %.0fs: took over its address share (%d range(s), "
                "%d address(es) kept for its containers) with %d of %d owners reachable",
                format_name(peer),
                now - since,
                ranges,
                len(kept),
                len(owners & (self.p.reachable | {self.p.me})),
                len(owners),
            )
            self.p.commit()
            self.p.broadcast_ring()

    def rehome(self) -> None:
        """Our addresses in space another peer now owns (our share was taken
        over while we were cut off, or two rings were made): claim each from
        its new owner, which kept it reserved for the same container.  Claims
        other peers made in our former share are theirs to re-home."""
        mine = format_name(self.p.me) + "/"
        busy = {(r.ident, r.addr) for r in self.pending.values()}
        for a in self.p.core.misplaced():
            owner = self.p.core.owner_of(a.addr)
            if owner is None:
                continue
            if not a.ident.startswith(mine):
                self.p.core.release_addr(a.addr)
            elif (a.ident, a.addr) not in busy:
                self._one(Rehoming(a.ident, a.addr, owner, a.ns_path))
        for ident, claims in list(self.p.remote.items()):
            for was, addr in claims:
                owner = self.p.core.owner_of(addr)
                if owner in (None, was) or (ident, addr) in busy:
                    continue
                assert owner is not None
                ns_path = self.p.remote_ns.get(ident, "")
                if owner == self.p.me:  # taken over by us: we kept it reserved
                    self.p.drop_remote(ident, addr)
                    self.p.core.claim(addr, ident, ns_path)
                else:
                    self._one(Rehoming(ident, addr, owner, ns_path))

    def _one(self, r: Rehoming) -> None:
        request = next(self.p.request_ids)
        self.pending[request] = r
        self.p.out.send(r.owner, encode_claim(request, r.addr, r.ident))

    def answered(self, r: Rehoming, status: int, msg: str) -> None:
        if status == CLAIM_NOT_OWNER:
            self.rehome()  # the ring moved on: ask whoever owns it now
            return
        self.p.release_if_held(r.addr, r.ident)
        self.p.drop_remote(r.ident, r.addr)
        if status == CLAIM_OK:
            self.p.remote.setdefault(r.ident, []).append((r.owner, r.addr))
            if r.ns_path:
                self.p.remote_ns[r.ident] = r.ns_path
            log.info(
                "address %s of %s is now held in the share of %s",
                ipaddress.IPv4Address(r.addr),
                r.ident,
                format_name(r.owner),
            )
        else:
            log.error(
                "address %s of %s was given to another container while this peer was cut "
                "off (%s): detach and attach %s again",
                ipaddress.IPv4Address(r.addr),
                r.ident,
                msg,
                r.ident.split("/", 1)[-1],
            )
        self.p.commit()
