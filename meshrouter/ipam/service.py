"""The trio side of IPAM: owns the sans-IO core and its store, talks to peers
through an ``IpamTransport`` (the mesh core, by way of the router shell), and
serves the API's allocate/claim/release with waiting where the mesh must act
first (the ring being made, a donation, a claim at another owner, other owners
recording a new allocation).  It also carries out the takeovers of dead peers'
shares that ``reclaim.Reclaimer`` decides on, and re-homes this peer's
addresses when its own share was taken over while it was cut off."""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from meshrouter.base.errors import BadPacket, IpamError
from meshrouter.base.names import format_name
from meshrouter.contract.status import IpamStatus, ShareStatus
from meshrouter.ipam.reclaim import (
    ALLOCS,
    ALLOCS_ACK,
    AllocSet,
    Reclaimer,
    encode_ack,
    encode_allocs,
)
from meshrouter.ipam.ring import (
    CLAIM,
    CLAIM_NOT_OWNER,
    CLAIM_OK,
    CLAIM_REPLY,
    CLAIM_TAKEN,
    DONATE,
    RELEASE,
    RING,
    Ipam,
    NoSpace,
    NotReady,
    decode_untrusted,
    encode_claim,
    encode_claim_reply,
    encode_donate,
    encode_ring,
)
from meshrouter.ipam.store import IpamStore

log = logging.getLogger("meshrouter.ipam")

WAIT = 30.0  # how long an API call waits for the mesh
CLAIM_TIMEOUT = 15.0  # > HEARTBEAT_TIMEOUT: a dead direct link is noticed meanwhile
CLAIM_RESEND = 2.0
RECLAIM_INTERVAL = 5.0
RECORD_TIMEOUT = 10.0  # for other owners to acknowledge a new allocation
ALLOCS_INTERVAL = 30.0  # our allocation set is sent again this often (anti-entropy)
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


@dataclass
class Rehoming:
    """One of our addresses in space now owned by another peer, being claimed there."""

    ident: str
    addr: int
    owner: bytes
    ns_path: str


class IpamTransport(Protocol):
    """How IPAM reaches other peers."""

    def send_ipam(self, name: bytes, payload: bytes) -> bool:
        """To one peer, directly or relayed; False if it cannot be reached."""

    def broadcast_ipam(self, payload: bytes, but: bytes | None) -> None:
        """To every neighbour but ``but``."""

    def neighbours(self) -> list[bytes]:
        """Peers with a direct connection."""


class IpamService:
    def __init__(
        self,
        me: bytes,
        cidr: str,
        init_count: int,
        state_dir: Path | None,
        transport: IpamTransport,
        reclaim_after: float = RECLAIM_AFTER,
    ) -> None:
        self.me = me
        self.transport = transport
        self.core = Ipam(me, cidr, init_count=init_count)
        self.reclaimer = Reclaimer(me, reclaim_after)
        self.store = IpamStore(state_dir / "ipam.db") if state_dir is not None else None
        self.remote: dict[str, list[tuple[bytes, int]]] = {}  # our claims in others' shares
        self.remote_ns: dict[str, str] = {}  # ... and their containers' namespaces
        if self.store is not None:
            self.remote, self.remote_ns = self.store.load(self.core, self.reclaimer)
        self._claiming: dict[int, tuple[int, str]] = {}  # request -> (addr, ident)
        self._published = self._holdings()
        self._reachable: set[bytes] = {me}
        self._pending: list[PendingReply] = []
        self._rehoming: dict[int, Rehoming] = {}
        self._next_allocs = 0.0
        self._next_rehome = 0.0
        self._blind_warned = False
        self.changed = trio.Event()
        self._requests = itertools.count(1)
        self._replies: dict[int, tuple[trio.Event, list[tuple[int, str]]]] = {}
        self._next_reclaim = 0.0
        # Told of each release: the container, and which addresses (None: all).
        self.on_release: Callable[[str, list[int] | None], None] = lambda ident, addrs: None
        # Told when containers were found gone (their records can go too).
        self.on_gone: Callable[[], None] = lambda: None

    # -- persistence and change --------------------------------------------

    def _holdings(self) -> dict[int, str]:
        """Our ALLOCS set: what we handed out and what our containers claimed
        in others' shares."""
        held = self.core.handed_out()
        for ident, claims in self.remote.items():
            for _, addr in claims:
                held[addr] = ident
        for addr, ident in self._claiming.values():  # listed before they are sent
            held[addr] = ident
        return held

    def _commit(self) -> None:
        held = self._holdings()
        if held != self._published:  # others must learn of it (see ``reclaim``)
            self._published = held
            self.reclaimer.bump()
            self.core.version += 1
            self.transport.broadcast_ipam(self._allocs_payload(), None)
        if self.store is not None and self.store.saved_version != self.core.version:
            self.store.save(self.core, self.remote, self.remote_ns, self.reclaimer)
        self._wake()

    def _wake(self) -> None:
        """Wake every API call waiting for the mesh to change."""
        self.changed.set()
        self.changed = trio.Event()

    def _allocs_payload(self) -> bytes:
        return encode_allocs(self.me, self.reclaimer.version, self._published)

    # -- from the mesh -----------------------------------------------------------

    def owners(self) -> set[bytes]:
        return {t.owner for t in self.core.tokens.values()}

    def ring_payload(self) -> bytes | None:
        return encode_ring(self.core.tokens) if self.core.ready else None

    def hello_payloads(self) -> list[bytes]:
        """For a new connection: the ring, our allocation set and those we know."""
        if not self.core.ready:
            return []
        sets = [encode_allocs(k.owner, k.version, k.allocs) for k in self.reclaimer.known.values()]
        return [encode_ring(self.core.tokens), self._allocs_payload(), *sets]

    def on_message(self, sender: bytes, payload: bytes) -> None:
        """Handle an IPAM control message.  Raises only BadPacket."""
        kind, value = decode_untrusted(payload)
        if kind == RING:
            assert isinstance(value, dict)
            if self.core.merge(value):
                self._rehome()
                self._commit()
                self.transport.broadcast_ipam(encode_ring(self.core.tokens), sender)
        elif kind == DONATE:
            start, prefix = value
            subnet = ipaddress.IPv4Network((start, prefix)) if prefix else None
            ring = self.core.donate(sender, subnet)
            if ring is not None:
                log.info("gave part of our address share to %s", format_name(sender))
                self._commit()
                self.transport.broadcast_ipam(ring, None)
        elif kind == CLAIM:
            request, addr, ident = value
            status = self.core.claim(addr, ident)
            msg = ""
            if status != CLAIM_OK:
                holder = self.core.allocs.get(addr)
                msg = f"in use by {holder.ident}" if holder else "not ours to give"
            self._commit()
            if status == CLAIM_OK and not self._recorded():
                # Granted once enough other owners know of it (see ``reclaim``).
                self._pending.append(
                    PendingReply(
                        sender,
                        request,
                        addr,
                        ident,
                        self.reclaimer.version,
                        trio.current_time() + RECORD_TIMEOUT,
                    )
                )
                return
            self.transport.send_ipam(sender, encode_claim_reply(request, status, msg))
        elif kind == CLAIM_REPLY:
            request, status, msg = value
            if request in self._rehoming:
                self._rehomed(self._rehoming.pop(request), status, msg)
                return
            waiter = self._replies.get(request)
            if waiter is not None:
                waiter[1].append((status, msg))
                waiter[0].set()
        elif kind == RELEASE:
            _, addr, ident = value
            held = self.core.allocs.get(addr)
            if held is not None and held.ident == ident:
                self.core.release_addr(addr)
                self._commit()
        elif kind == ALLOCS:
            assert isinstance(value, AllocSet)
            changed = self.reclaimer.merge(value)
            if changed:
                for addr in self.reclaimer.stale(value, self.core.handed_out()):
                    self.core.release_addr(addr)  # its holder no longer needs it
                self.core.version += 1  # saved with the rest
                self._commit()
                self.transport.broadcast_ipam(payload, sender)
            if self.reclaimer.should_ack(value, sender, changed):
                self.transport.send_ipam(value.owner, encode_ack(value.owner, value.version))
        elif kind == ALLOCS_ACK:
            owner, version = value
            if self.reclaimer.on_ack(sender, owner, version):
                self._settle(trio.current_time())
                self._commit()
        else:  # pragma: no cover - decode_untrusted knows no other kinds
            raise BadPacket("unknown IPAM message")

    # -- recording allocations with other owners ---------------------------------------

    def _recorded(self, version: int | None = None) -> bool:
        v = self.reclaimer.version if version is None else version
        return self.reclaimer.recorded(v, self.owners())

    def _settle(self, now: float) -> None:
        """Answer the claims other owners have now recorded; refuse those they
        did not record in time."""
        waiting: list[PendingReply] = []
        for p in self._pending:
            if self._recorded(p.version):
                self.transport.send_ipam(p.sender, encode_claim_reply(p.request, CLAIM_OK, ""))
            elif now >= p.deadline:
                held = self.core.allocs.get(p.addr)
                if held is not None and held.ident == p.ident:
                    self.core.release_addr(p.addr)
                self.transport.send_ipam(
                    p.sender,
                    encode_claim_reply(p.request, CLAIM_TAKEN, self._unrecorded_reason()),
                )
            else:
                waiting.append(p)
        self._pending = waiting

    def _unrecorded_reason(self) -> str:
        owners = self.owners() | {self.me}
        reach = len(owners & (self._reachable | {self.me}))
        return (
            f"peer {format_name(self.me)} reaches {reach} of {len(owners)} address owners; "
            f"a new address needs {self.reclaimer.needed(owners)} other owner(s) to record "
            "it, so that it survives a takeover (--reclaim-after): wait for the mesh to "
            "reconnect, or run the routers with --reclaim-after 0"
        )

    async def _record(self, addr: int, ident: str, deadline: float) -> None:
        """Wait until other owners recorded our allocation of ``addr``; else
        let it go and raise IpamError."""
        version = self.reclaimer.version
        resend = trio.current_time() + CLAIM_RESEND
        deadline = min(deadline, trio.current_time() + RECORD_TIMEOUT)
        while not self._recorded(version):
            now = trio.current_time()
            if now >= deadline:
                held = self.core.allocs.get(addr)
                if held is not None and held.ident == ident:
                    self.core.release_addr(addr)
                    self._commit()
                raise IpamError(self._unrecorded_reason())
            if now >= resend:
                resend = now + CLAIM_RESEND
                self.transport.broadcast_ipam(self._allocs_payload(), None)
            with trio.move_on_at(min(deadline, resend)):
                await self.changed.wait()

    async def _wait_recordable(self, deadline: float) -> None:
        while not self.reclaimer.can_record(self.owners(), self._reachable):
            await self._wait_change(deadline, self._unrecorded_reason())

    # -- takeovers and re-homing -------------------------------------------------

    def _take_over_dead(self, now: float) -> None:
        owners = self.owners()
        for peer in self.reclaimer.observe(now, owners, self._reachable):
            since = self.reclaimer.unreachable_since[peer]
            ranges, kept = self.core.take_over(peer, self.reclaimer.handed_out_by(peer))
            if not ranges:
                continue
            log.warning(
                "peer %s unreachable for %.0fs: took over its address share (%d range(s), "
                "%d address(es) kept for its containers) with %d of %d owners reachable",
                format_name(peer),
                now - since,
                ranges,
                len(kept),
                len(owners & (self._reachable | {self.me})),
                len(owners),
            )
            self._commit()
            self.transport.broadcast_ipam(encode_ring(self.core.tokens), None)

    def _rehome(self) -> None:
        """Our addresses in space another peer now owns (our share was taken
        over while we were cut off, or two rings were made): claim each from
        its new owner, which kept it reserved for the same container.  Claims
        other peers made in our former share are theirs to re-home."""
        mine = format_name(self.me) + "/"
        busy = {(r.ident, r.addr) for r in self._rehoming.values()}
        for a in self.core.misplaced():
            owner = self.core.owner_of(a.addr)
            if owner is None:
                continue
            if not a.ident.startswith(mine):
                self.core.release_addr(a.addr)
            elif (a.ident, a.addr) not in busy:
                self._rehome_one(Rehoming(a.ident, a.addr, owner, a.ns_path))
        for ident, claims in list(self.remote.items()):
            for was, addr in claims:
                owner = self.core.owner_of(addr)
                if owner in (None, was) or (ident, addr) in busy:
                    continue
                assert owner is not None
                ns_path = self.remote_ns.get(ident, "")
                if owner == self.me:  # taken over by us: we kept it reserved
                    self._drop_remote(ident, addr)
                    self.core.claim(addr, ident, ns_path)
                else:
                    self._rehome_one(Rehoming(ident, addr, owner, ns_path))

    def _rehome_one(self, r: Rehoming) -> None:
        request = next(self._requests)
        self._rehoming[request] = r
        self.transport.send_ipam(r.owner, encode_claim(request, r.addr, r.ident))

    def _drop_remote(self, ident: str, addr: int) -> None:
        kept = [(o, a) for o, a in self.remote.get(ident, []) if a != addr]
        if kept:
            self.remote[ident] = kept
        else:
            self.remote.pop(ident, None)
        self.core.version += 1

    def _rehomed(self, r: Rehoming, status: int, msg: str) -> None:
        if status == CLAIM_NOT_OWNER:
            self._rehome()  # the ring moved on: ask whoever owns it now
            return
        held = self.core.allocs.get(r.addr)
        if held is not None and held.ident == r.ident:
            self.core.release_addr(r.addr)
        self._drop_remote(r.ident, r.addr)
        if status == CLAIM_OK:
            self.remote.setdefault(r.ident, []).append((r.owner, r.addr))
            if r.ns_path:
                self.remote_ns[r.ident] = r.ns_path
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
        self._commit()

    def tick(self, now: float, reachable: set[bytes]) -> None:
        if reachable != self._reachable:
            self._reachable = set(reachable)
            self._wake()  # a wait for owners to record an allocation may go on
        ring = self.core.maybe_init(reachable, now)
        if ring is not None:
            log.info(
                "made the address ring for %s among %d peer(s)", self.core.network, len(reachable)
            )
            self._commit()
            self.transport.broadcast_ipam(ring, None)
        if now >= self._next_reclaim:
            self._next_reclaim = now + RECLAIM_INTERVAL
            self._reclaim_dead()
        if self.core.ready:
            self._take_over_dead(now)
            if now >= self._next_allocs:
                self._next_allocs = now + ALLOCS_INTERVAL
                self.transport.broadcast_ipam(self._allocs_payload(), None)
            if self._rehoming and now >= self._next_rehome:
                self._next_rehome = now + CLAIM_RESEND
                for request, r in list(self._rehoming.items()):
                    self.transport.send_ipam(r.owner, encode_claim(request, r.addr, r.ident))
        if self._pending:
            self._settle(now)

    def _reclaim_dead(self) -> None:
        """Release addresses whose container namespace is gone, ours and those
        our containers claimed in other peers' shares."""
        dead = {
            a.ident
            for a in self.core.allocs.values()
            if a.ns_path and not os.path.exists(a.ns_path)
        } | {i for i, path in self.remote_ns.items() if path and not os.path.exists(path)}
        for ident in dead:
            log.info("container %s is gone: releasing its address", ident)
            self._release(ident)
        if dead:
            self._commit()
            self.on_gone()

    # -- the API --------------------------------------------------------------------

    async def _wait_change(self, deadline: float, what: str) -> None:
        with trio.move_on_at(deadline) as cs:
            await self.changed.wait()
        if cs.cancelled_caught:
            raise IpamError(what)

    def _watchable(self, ns_path: str) -> str:
        """``ns_path`` if this process can see it, else "" (never reclaimed):
        a router in a container without the host's PID namespace cannot see
        /proc/PID of other containers, and must not take that for their end."""
        if not ns_path or os.path.exists(ns_path):
            return ns_path
        if not self._blind_warned:
            self._blind_warned = True
            log.warning(
                "cannot see container namespace %s from the router: addresses of such "
                "containers are released only by detach (run the router image with --pid host)",
                ns_path,
            )
        return ""

    async def allocate(self, ident: str, ns_path: str, subnet: str | None) -> str:
        ns_path = self._watchable(ns_path)
        net = self._subnet(subnet)
        deadline = trio.current_time() + WAIT
        asked: set[bytes] = set()
        donor_wait: float | None = None
        while True:
            try:
                if self.core.ready:
                    await self._wait_recordable(deadline)
                addr = self.core.allocate(ident, net, ns_path)
            except NotReady:
                await self._wait_change(deadline, self._not_ready_reason())
                continue
            except NoSpace:
                # Ask one donor at a time, the next after 5 s; other changes
                # (acks, gossip) wake us meanwhile without counting as a refusal.
                now = trio.current_time()
                if donor_wait is None or now >= donor_wait:
                    donor = self._pick_donor(net, asked)
                    if donor is None:
                        raise IpamError(
                            f"no free address in {net or self.core.network} anywhere reachable"
                        ) from None
                    asked.add(donor)
                    self.transport.send_ipam(donor, encode_donate(net))
                    donor_wait = now + 5
                if donor_wait >= deadline:
                    await self._wait_change(deadline, "no peer gave us address space in time")
                else:
                    with trio.move_on_at(donor_wait):
                        await self.changed.wait()
                continue
            self._commit()
            await self._record(addr, ident, deadline)
            prefix = (net or self.core.network).prefixlen
            return f"{ipaddress.IPv4Address(addr)}/{prefix}"

    def _subnet(self, subnet: str | None) -> ipaddress.IPv4Network | None:
        if subnet is None:
            return None
        try:
            net = ipaddress.IPv4Network(subnet)
        except ValueError as exc:
            raise IpamError(f"invalid subnet {subnet!r}: {exc}") from None
        if not net.subnet_of(self.core.network):
            raise IpamError(f"subnet {net} is not inside the mesh range {self.core.network}")
        return net

    def _not_ready_reason(self) -> str:
        return (
            f"the mesh has not agreed on address ownership yet: it needs "
            f"{self.core.quorum} of {self.core.init_count} initial peers connected "
            "(see 'mesh status peers'; --ipalloc-init sets how many)"
        )

    def _pick_donor(self, net: ipaddress.IPv4Network | None, asked: set[bytes]) -> bytes | None:
        lo, hi = self.core.bounds(net)
        space: dict[bytes, int] = {}
        for s, e, owner in self.core.intervals():
            n = min(e, hi) - max(s, lo)
            if n > 0 and owner != self.me:
                space[owner] = space.get(owner, 0) + n
        candidates = [p for p in self.transport.neighbours() if p in space and p not in asked]
        return max(candidates, key=lambda p: space[p], default=None)

    async def claim(self, cidr: str, ident: str, ns_path: str) -> str:
        ns_path = self._watchable(ns_path)
        iface = ipaddress.IPv4Interface(cidr)
        addr = int(iface.ip)
        deadline = trio.current_time() + WAIT
        while not self.core.ready:
            await self._wait_change(deadline, self._not_ready_reason())
        owner = self.core.owner_of(addr)
        if owner is None:
            raise IpamError(f"{iface.ip} is outside the mesh range {self.core.network}")
        if owner == self.me:
            await self._wait_recordable(deadline)
            status = self.core.claim(addr, ident, ns_path)
            if status != CLAIM_OK:
                holder = self.core.allocs.get(addr)
                who = f" by {holder.ident.split('/', 1)[-1]}" if holder else ""
                raise IpamError(f"{iface.ip} is already in use{who}")
            self._commit()
            await self._record(addr, ident, deadline)
            return str(iface)
        request = next(self._requests)
        event, answer = trio.Event(), list[tuple[int, str]]()
        self._replies[request] = (event, answer)
        # Listed in our set before it is sent: an owner that granted it never
        # sees a newer set of ours without it (see ``Reclaimer.stale``).
        self._claiming[request] = (addr, ident)
        self._commit()
        try:
            message = encode_claim(request, addr, ident)
            if not self.transport.send_ipam(owner, message):
                raise IpamError(
                    f"{iface.ip} belongs to peer {format_name(owner)}, which cannot be reached: "
                    "use an address of this host's share, or none"
                )
            # A claim is idempotent for one ident, so it is sent again until
            # answered: a direct connection that died unnoticed is dropped by
            # the heartbeat timeout and the next copy goes round it by relay.
            with trio.move_on_after(CLAIM_TIMEOUT):
                while True:
                    with trio.move_on_after(CLAIM_RESEND):
                        await event.wait()
                    if event.is_set():
                        break
                    self.transport.send_ipam(owner, message)
        finally:
            del self._replies[request]
            del self._claiming[request]
        if not answer:
            raise IpamError(f"peer {format_name(owner)} did not answer the claim of {iface.ip}")
        status, msg = answer[0]
        if status == CLAIM_NOT_OWNER:
            raise IpamError(f"{iface.ip}: ownership moved while claiming; try again")
        if status != CLAIM_OK:
            raise IpamError(f"{iface.ip} is already in use ({msg})")
        held = self.remote.setdefault(ident, [])
        if (owner, addr) not in held:  # claimed again (reattach): one record
            held.append((owner, addr))
        if ns_path:
            self.remote_ns[ident] = ns_path
        self.core.version += 1  # the remote claims are saved with the rest
        self._commit()
        return str(iface)

    def release(self, ident: str, addrs: list[str] | None = None) -> list[str]:
        """Let ``ident``'s addresses go (only ``addrs``, when given); the
        released ones, in dotted form."""
        if addrs is None:
            gone = self._release(ident)
        else:
            try:
                which = {int(ipaddress.IPv4Interface(a).ip) for a in addrs}
            except ValueError:
                raise IpamError(f"invalid address in {addrs}: expected IPv4 addresses") from None
            gone = self._release_some(ident, which)
        self._commit()
        return gone

    def _holder(self, address: str) -> tuple[int, str | None]:
        try:
            addr = int(ipaddress.IPv4Address(address.split("/")[0]))
        except ValueError:
            raise IpamError(f"invalid address {address!r}") from None
        held = self.core.allocs.get(addr)
        if held is not None:
            return addr, held.ident
        return addr, next((i for i, cl in self.remote.items() if addr in (a for _, a in cl)), None)

    def held(self, ident: str) -> set[int]:
        """The addresses ``ident`` holds, in our share or claimed in another's."""
        mine = {a for a, alloc in self.core.allocs.items() if alloc.ident == ident}
        return mine | {a for _, a in self.remote.get(ident, [])}

    def holder(self, address: str) -> str | None:
        """The ident of ours that holds ``address`` (in our share or claimed
        in another's), or None."""
        return self._holder(address)[1]

    def release_address(self, address: str) -> str | None:
        """Let ``address`` go, whoever of ours holds it; the holder's ident, or None."""
        addr, ident = self._holder(address)
        if ident is not None:
            self._release_some(ident, {addr})
            self._commit()
        return ident

    def _release(self, ident: str) -> list[str]:
        self.on_release(ident, None)
        gone = [str(ipaddress.IPv4Address(a)) for a in self.core.release(ident)]
        self.remote_ns.pop(ident, None)
        for owner, addr in self.remote.pop(ident, []):
            self._send_release(owner, addr, ident)
            gone.append(str(ipaddress.IPv4Address(addr)))
            self.core.version += 1
        return gone

    def _send_release(self, owner: bytes, addr: int, ident: str) -> None:
        """RELEASE a claim of ours, to whoever owns the address now (``owner``
        claimed it for us; its share may have been taken over since)."""
        owner = self.core.owner_of(addr) or owner
        self.transport.send_ipam(owner, encode_claim(0, addr, ident, RELEASE))

    def _release_some(self, ident: str, which: set[int]) -> list[str]:
        released: list[int] = []
        for addr in sorted(which):
            held = self.core.allocs.get(addr)
            if held is not None and held.ident == ident:
                self.core.release_addr(addr)
                released.append(addr)
        had_claims = ident in self.remote
        for owner, addr in list(self.remote.get(ident, [])):
            if addr in which:
                self._send_release(owner, addr, ident)
                self._drop_remote(ident, addr)
                released.append(addr)
        gone = had_claims and ident not in self.remote
        if gone and not any(a.ident == ident for a in self.core.allocs.values()):
            self.remote_ns.pop(ident, None)
        if released:
            self.on_release(ident, released)
        return [str(ipaddress.IPv4Address(a)) for a in released]

    def hand_over(self) -> str:
        """Leave the mesh for good (``mesh reset``): release our containers'
        addresses, give our whole share to a neighbour and tell it of the
        addresses other peers' containers hold in it.  Returns what was done."""
        mine = format_name(self.me) + "/"
        idents = {a.ident for a in self.core.allocs.values() if a.ident.startswith(mine)}
        for ident in idents | set(self.remote):
            self._release(ident)
        neighbours = sorted(self.transport.neighbours())
        if not self.core.mine():
            self._commit()
            return "this peer owned no addresses"
        if not neighbours:
            self._commit()
            return (
                "no peer is connected: this peer's address share stays its own; "
                f"run 'mesh rmpeer {format_name(self.me)}' on another peer"
            )
        to = neighbours[0]
        kept = list(self.core.allocs.values())
        ring = self.core.hand_over(to)
        if ring is not None:
            self.transport.broadcast_ipam(ring, None)
        for a in kept:  # now in ``to``'s share: it records them as claims
            self.transport.send_ipam(to, encode_claim(0, a.addr, a.ident))
        self.core.allocs.clear()
        self.core.version += 1
        self._commit()
        return f"address share handed to {format_name(to)}"

    def rmpeer(self, peer: bytes) -> int:
        """The operator says ``peer`` is dead: take over its share now, and let
        go of what we held for its containers (after a takeover by quorum)."""
        n, ring = self.core.rmpeer(peer)
        theirs = format_name(peer) + "/"
        for ident in {a.ident for a in self.core.allocs.values() if a.ident.startswith(theirs)}:
            self.core.release(ident)
        self.reclaimer.forget(peer)
        self._commit()
        if ring is not None:
            self.transport.broadcast_ipam(ring, None)
        return n

    def status(self, nick: Callable[[bytes], str], now: float) -> IpamStatus:
        shares: list[ShareStatus] = []
        for share in self.core.status():
            owner = share["owner"]
            assert isinstance(owner, bytes)
            owned, used = share["owned"], share["used"]
            assert isinstance(owned, int)
            assert used is None or isinstance(used, int)
            shares.append(
                {
                    "peer": format_name(owner),
                    "nickname": nick(owner),
                    "owned": owned,
                    "used": used,
                    "free": None if used is None else owned - used,
                    "unreachable_for": (
                        None
                        if (since := self.reclaimer.unreachable_since.get(owner)) is None
                        else round(now - since, 1)
                    ),
                }
            )
        return {
            "range": str(self.core.network),
            "ready": self.core.ready,
            "init_count": self.core.init_count,
            "quorum": self.core.quorum,
            "reclaim_after": self.reclaimer.after,
            "shares": shares,
            "allocations": [
                {"address": str(ipaddress.IPv4Address(a.addr)), "container": a.ident}
                for a in sorted(self.core.allocs.values(), key=lambda a: a.addr)
            ],
        }

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
