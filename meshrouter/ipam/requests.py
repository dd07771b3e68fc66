"""What the API asks of this peer's IPAM (sans-IO): the steps of allocate,
claim, release, hand-over and rmpeer, each deciding at once against
``IpamPeer``'s state; the trio service does the waiting between them."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshrouter.base.errors import IpamError
from meshrouter.base.names import format_name
from meshrouter.contract.status import IpamStatus, ShareStatus
from meshrouter.ipam.ring import CLAIM_OK, encode_claim, encode_donate

if TYPE_CHECKING:
    from meshrouter.ipam.peer import IpamPeer

log = logging.getLogger("meshrouter.ipam")


class Requests:
    def __init__(self, peer: IpamPeer) -> None:
        self.p = peer

    def subnet(self, subnet: str | None) -> ipaddress.IPv4Network | None:
        if subnet is None:
            return None
        try:
            net = ipaddress.IPv4Network(subnet)
        except ValueError as exc:
            raise IpamError(f"invalid subnet {subnet!r}: {exc}") from None
        if not net.subnet_of(self.p.core.network):
            raise IpamError(f"subnet {net} is not inside the mesh range {self.p.core.network}")
        return net

    def allocate(self, ident: str, net: ipaddress.IPv4Network | None, ns_path: str) -> int:
        """An address in our share; raises NotReady or NoSpace (the service waits)."""
        addr = self.p.core.allocate(ident, net, ns_path)
        self.p.commit()
        return addr

    def pick_donor(self, net: ipaddress.IPv4Network | None, asked: set[bytes]) -> bytes | None:
        lo, hi = self.p.core.bounds(net)
        space: dict[bytes, int] = {}
        for s, e, owner in self.p.core.intervals():
            n = min(e, hi) - max(s, lo)
            if n > 0 and owner != self.p.me:
                space[owner] = space.get(owner, 0) + n
        # A neighbour first; under --conn-limit the owners may be reachable
        # only through relays, and the request and its answer are relayed.
        near = self.p.neighbours
        candidates = [p for p in space if p not in asked and (p in near or p in self.p.reachable)]
        return max(candidates, key=lambda p: (p in near, space[p], p), default=None)

    def ask_donation(self, donor: bytes, net: ipaddress.IPv4Network | None) -> None:
        self.p.out.send(donor, encode_donate(net))

    def claim_here(self, addr: int, ident: str, ns_path: str) -> None:
        """A claim in our own share.  Raises IpamError when it is in use."""
        status = self.p.core.claim(addr, ident, ns_path)
        if status != CLAIM_OK:
            holder = self.p.core.allocs.get(addr)
            who = f" by {holder.ident.split('/', 1)[-1]}" if holder else ""
            raise IpamError(f"{ipaddress.IPv4Address(addr)} is already in use{who}")
        self.p.commit()

    def start_claim(self, owner: bytes, addr: int, ident: str) -> int:
        """A claim at ``owner``: sent now, and again by ``resend_claim``.
        Listed in our set before it is sent: an owner that granted it never
        sees a newer set of ours without it (see ``Reclaimer.stale``)."""
        if not self.p.can_reach(owner):
            raise IpamError(
                f"{ipaddress.IPv4Address(addr)} belongs to peer {format_name(owner)}, which "
                "cannot be reached: use an address of this host's share, or none"
            )
        request = next(self.p.request_ids)
        self.p.claiming[request] = (addr, ident)
        self.p.commit()
        self.resend_claim(request, owner)
        return request

    def resend_claim(self, request: int, owner: bytes) -> None:
        """A claim is idempotent for one ident, so it is sent again until
        answered: a direct connection that died unnoticed is dropped by the
        heartbeat timeout and the next copy goes round it by relay."""
        addr, ident = self.p.claiming[request]
        self.p.out.send(owner, encode_claim(request, addr, ident))

    def answer(self, request: int) -> tuple[int, str] | None:
        return self.p.answers.get(request)

    def end_claim(self, request: int) -> tuple[int, str] | None:
        """The claim is over (answered or given up): its answer, if any."""
        self.p.claiming.pop(request, None)
        return self.p.answers.pop(request, None)

    def claimed_at(self, owner: bytes, addr: int, ident: str, ns_path: str) -> None:
        """``owner`` granted our claim of ``addr``."""
        held = self.p.remote.setdefault(ident, [])
        if (owner, addr) not in held:  # claimed again (reattach): one record
            held.append((owner, addr))
        if ns_path:
            self.p.remote_ns[ident] = ns_path
        self.p.bump()  # the remote claims are saved with the rest
        self.p.commit()

    def release(self, ident: str, addrs: list[str] | None = None) -> list[str]:
        """Let ``ident``'s addresses go (only ``addrs``, when given); the
        released ones, in dotted form."""
        if addrs is None:
            gone = self.p.release_all(ident)
        else:
            try:
                which = {int(ipaddress.IPv4Interface(a).ip) for a in addrs}
            except ValueError:
                raise IpamError(f"invalid address in {addrs}: expected IPv4 addresses") from None
            gone = self.p.release_some(ident, which)
        self.p.commit()
        return gone

    def _holder(self, address: str) -> tuple[int, str | None]:
        try:
            addr = int(ipaddress.IPv4Address(address.split("/")[0]))
        except ValueError:
            raise IpamError(f"invalid address {address!r}") from None
        held = self.p.core.allocs.get(addr)
        if held is not None:
            return addr, held.ident
        return addr, next(
            (i for i, cl in self.p.remote.items() if addr in (a for _, a in cl)), None
        )

    def held(self, ident: str) -> set[int]:
        """The addresses ``ident`` holds, in our share or claimed in another's."""
        mine = {a for a, alloc in self.p.core.allocs.items() if alloc.ident == ident}
        return mine | {a for _, a in self.p.remote.get(ident, [])}

    def holder(self, address: str) -> str | None:
        """The ident of ours that holds ``address`` (in our share or claimed
        in another's), or None."""
        return self._holder(address)[1]

    def release_address(self, address: str) -> str | None:
        """Let ``address`` go, whoever of ours holds it; the holder's ident, or None."""
        addr, ident = self._holder(address)
        if ident is not None:
            self.p.release_some(ident, {addr})
            self.p.commit()
        return ident

    def hand_over(self) -> str:
        """Leave the mesh for good (``mesh reset``): release our containers'
        addresses, give our whole share to a neighbour and tell it of the
        addresses other peers' containers hold in it.  Returns what was done."""
        mine = format_name(self.p.me) + "/"
        idents = {a.ident for a in self.p.core.allocs.values() if a.ident.startswith(mine)}
        for ident in sorted(idents | set(self.p.remote)):
            self.p.release_all(ident)
        neighbours = sorted(self.p.neighbours)
        if not self.p.core.mine():
            self.p.commit()
            return "this peer owned no addresses"
        if not neighbours:
            self.p.commit()
            return (
                "no peer is connected: this peer's address share stays its own; "
                f"run 'mesh rmpeer {format_name(self.p.me)}' on another peer"
            )
        to = neighbours[0]
        kept = list(self.p.core.allocs.values())
        ring = self.p.core.hand_over(to)
        if ring is not None:
            self.p.out.broadcast(ring)
        for a in kept:  # now in ``to``'s share: it records them as claims
            self.p.out.send(to, encode_claim(0, a.addr, a.ident))
        self.p.core.allocs.clear()
        self.p.bump()
        self.p.commit()
        return f"address share handed to {format_name(to)}"

    def rmpeer(self, peer: bytes) -> int:
        """The operator says ``peer`` is dead: take over its share now, and let
        go of what we held for its containers (after a takeover by quorum)."""
        n, ring = self.p.core.rmpeer(peer)
        theirs = format_name(peer) + "/"
        for ident in {a.ident for a in self.p.core.allocs.values() if a.ident.startswith(theirs)}:
            self.p.core.release(ident)
        self.p.reclaimer.forget(peer)
        self.p.commit()
        if ring is not None:
            self.p.out.broadcast(ring)
        return n

    def status(self, nick: Callable[[bytes], str], now: float) -> IpamStatus:
        shares: list[ShareStatus] = []
        for share in self.p.core.status():
            owner = share["owner"]
            assert isinstance(owner, bytes)
            owned, used = share["owned"], share["used"]
            assert isinstance(owned, int)
            assert used is None or isinstance(used, int)
            since = self.p.reclaimer.unreachable_since.get(owner)
            shares.append(
                {
                    "peer": format_name(owner),
                    "nickname": nick(owner),
                    "owned": owned,
                    "used": used,
                    "free": None if used is None else owned - used,
                    "unreachable_for": None if since is None else round(now - since, 1),
                }
            )
        return {
            "range": str(self.p.core.network),
            "ready": self.p.core.ready,
            "init_count": self.p.core.init_count,
            "quorum": self.p.core.quorum,
            "reclaim_after": self.p.reclaimer.after,
            "shares": shares,
            "allocations": [
                {"address": str(ipaddress.IPv4Address(a.addr)), "container": a.ident}
                for a in sorted(self.p.core.allocs.values(), key=lambda a: a.addr)
            ],
        }
