"""The trio side of IPAM: the store, the waiting, the namespaces on this host.

``IpamPeer`` decides everything; this service only

* loads and saves its state (``IpamStore``) when its ``version`` moves,
* serves the API's allocate/claim with waiting where the mesh must act first
  (the ring being made, a donation, a claim at another owner, other owners
  recording a new allocation): each wait ends when the peer's ``changes``
  moves (``settle``, which the router calls after every mesh event) or at
  its deadline,
* looks at this host's namespaces every few seconds and tells the peer which
  containers vanished: a namespace that vanished may only belong to a
  container that stopped (``docker stop``, a restart that takes a while),
  so when the daemon gave ``still_there`` the container's engine is asked
  first, and a stopped container keeps its addresses until it
  is removed (asked again every ``STOPPED_RECHECK`` seconds),
* and, after each step of its own, calls ``output`` (given at construction:
  it wakes the router's pump, which sends what the peer's outbox holds).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from meshrouter.base.errors import IpamError
from meshrouter.base.lograte import LogLimiter
from meshrouter.base.names import format_name
from meshrouter.contract.status import IpamStatus
from meshrouter.ipam.peer import CLAIM_RESEND, RECLAIM_AFTER, RECORD_TIMEOUT, IpamPeer
from meshrouter.ipam.ring import CLAIM_NOT_OWNER, CLAIM_OK, Ipam, NoSpace, NotReady
from meshrouter.ipam.store import IpamStore, IpamStoreError

log = logging.getLogger("meshrouter.ipam")

WAIT = 30.0  # how long an API call waits for the mesh
CLAIM_TIMEOUT = 15.0  # > HEARTBEAT_TIMEOUT: a dead direct link is noticed meanwhile
RECLAIM_INTERVAL = 5.0
STOPPED_RECHECK = 30.0  # a stopped container's engine is asked again this often ...
STOPPED_QUICK = 4  # ... after being asked at each look this many times
DONOR_WAIT = 5.0
# A claim in the share of a peer that is out of reach waits this long for it
# to come back (a router restarted a moment ago reconnects within seconds).
REACH_WAIT = 10.0

__all__ = ["CLAIM_TIMEOUT", "RECLAIM_AFTER", "RECLAIM_INTERVAL", "IpamService"]


class IpamService:
    def __init__(
        self,
        me: bytes,
        cidr: str,
        init_count: int,
        state_dir: Path | None,
        output: Callable[[], None],
        reclaim_after: float = RECLAIM_AFTER,
    ) -> None:
        self.peer = IpamPeer(me, cidr, init_count, reclaim_after)
        self._output = output
        self.store = IpamStore(state_dir / "ipam.db") if state_dir is not None else None
        if self.store is not None:
            self.peer.restored(*self.store.load(self.peer.core, self.peer.reclaimer))
        else:
            self.peer.restored({}, {})
        self.changed = trio.Event()
        self._seen = self.peer.changes
        self._blind_warned = False
        self._reaped = False
        self._save_failures = LogLimiter()
        # Which of the containers behind idents whose namespace vanished still
        # exist (stopped), asked of their engines (the daemon's, in a thread).
        # None: a vanished namespace is a removed container (bare netns).
        self.still_there: Callable[[set[str]], Awaitable[set[str]]] | None = None
        # ident -> (its namespace when it was found stopped, when to ask
        # again, how often it was asked): asked at every look the first few
        # times (a container being removed looks stopped for a moment), then
        # every STOPPED_RECHECK
        self._stopped: dict[str, tuple[str, float, int]] = {}

    @property
    def core(self) -> Ipam:
        return self.peer.core

    @property
    def me(self) -> bytes:
        return self.peer.me

    @property
    def remote(self) -> dict[str, list[tuple[bytes, int]]]:
        return self.peer.remote

    @property
    def remote_ns(self) -> dict[str, str]:
        return self.peer.remote_ns

    # -- after every step --------------------------------------------------------

    def settle(self) -> None:
        """Save what changed, and wake the API calls waiting for a change."""
        if self.store is not None and self.store.saved_version != self.peer.version:
            try:
                self.store.save(
                    self.peer.core, self.peer.remote, self.peer.remote_ns, self.peer.reclaimer
                )
            except (IpamStoreError, OSError) as exc:  # a full disk: keep going, save later
                if self._save_failures.allow("save", trio.current_time()) is not None:
                    log.error(
                        "%s; IPAM's state is kept in memory and saved as soon as it can be", exc
                    )
        if self.peer.changes != self._seen:
            self._seen = self.peer.changes
            self.changed.set()
            self.changed = trio.Event()

    def _step(self) -> None:
        """After a step of ours: persist, wake, and have the outbox sent."""
        self.settle()
        self._output()

    # -- this host's namespaces ---------------------------------------------------

    async def watch_namespaces(self) -> None:
        """Every few seconds: containers whose namespace vanished, and that
        are not merely stopped, let go of their addresses (ours, and those
        claimed in other peers' shares)."""
        while True:
            await self.reap_checked()
            await trio.sleep(RECLAIM_INTERVAL)

    def _vanished(self, watched: dict[str, str] | None = None) -> set[str]:
        """The idents (of ``watched``, default all) whose namespace is gone."""
        watched = self.peer.watched() if watched is None else watched
        return {i for i, path in watched.items() if not os.path.exists(path)}

    async def reap_checked(self) -> None:
        """``reap``, asking ``still_there`` about each vanished container
        first (and about a stopped one again every ``STOPPED_RECHECK``)."""
        watched = self.peer.watched()
        vanished = self._vanished(watched)
        for ident in set(self._stopped) - vanished:
            del self._stopped[ident]  # running again (re-attached), or released
        if self.still_there is None or not vanished:
            self.reap(vanished)
            return
        now = trio.current_time()
        # Asked now: what vanished since the last look, what is due again, and
        # what was re-attached (a new namespace) and has vanished again since.
        ask = set()
        for ident in vanished:
            path, due, _tries = self._stopped.get(ident, ("", -1.0, 0))
            if due <= now or path != watched[ident]:
                ask.add(ident)
        if not ask:
            return
        kept = await self.still_there(ask)
        for ident in kept:
            path, _due, tries = self._stopped.get(ident, ("", 0.0, 0))
            if path != watched[ident]:
                tries = 0
                log.info("container %s stopped: it keeps its addresses until removed", ident)
            wait = RECLAIM_INTERVAL if tries < STOPPED_QUICK else STOPPED_RECHECK
            self._stopped[ident] = (watched[ident], now + wait - 0.5, tries + 1)
        # A container re-attached while its engine was asked is not gone.
        self.reap((ask - kept) & self._vanished())

    def reap(self, gone: set[str] | None = None) -> None:
        """The containers ``gone`` (default: every one whose namespace
        vanished) let go of their addresses."""
        gone = self._vanished() if gone is None else gone
        if gone:
            for ident in gone:
                self._stopped.pop(ident, None)
            self.peer.containers_gone(gone)
            self._reaped = True
            self._step()

    def take_reaped(self) -> bool:
        """Whether containers vanished since the last call (their records can go too)."""
        reaped, self._reaped = self._reaped, False
        return reaped

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

    # -- waiting -------------------------------------------------------------------

    async def _wait_change(self, deadline: float, what: str) -> None:
        with trio.move_on_at(deadline) as cs:
            await self.changed.wait()
        if cs.cancelled_caught:
            raise IpamError(what)

    async def _wait_recordable(self, deadline: float) -> None:
        while not self.peer.can_record():
            await self._wait_change(deadline, self.peer.unrecorded_reason())

    async def _record(self, addr: int, ident: str, deadline: float) -> None:
        """Wait until other owners recorded our allocation of ``addr``; else
        let it go and raise IpamError."""
        version = self.peer.reclaimer.version
        resend = trio.current_time() + CLAIM_RESEND
        deadline = min(deadline, trio.current_time() + RECORD_TIMEOUT)
        while not self.peer.recorded_since(version):
            now = trio.current_time()
            if now >= deadline:
                reason = self.peer.unrecorded(addr, ident)
                self._step()
                raise IpamError(reason)
            if now >= resend:
                resend = now + CLAIM_RESEND
                self.peer.resend_allocs()
                self._output()
            with trio.move_on_at(min(deadline, resend)):
                await self.changed.wait()

    # -- the API --------------------------------------------------------------------

    async def allocate(self, ident: str, ns_path: str, subnet: str | None) -> str:
        ns_path = self._watchable(ns_path)
        net = self.peer.requests.subnet(subnet)
        deadline = trio.current_time() + WAIT
        asked: set[bytes] = set()
        donor_wait: float | None = None
        while True:
            try:
                if self.peer.core.ready:
                    await self._wait_recordable(deadline)
                addr = self.peer.requests.allocate(ident, net, ns_path)
            except NotReady:
                await self._wait_change(deadline, self.peer.not_ready_reason())
                continue
            except NoSpace:
                # Ask one donor at a time, the next after 5 s; other changes
                # (acks, gossip) wake us meanwhile without counting as a refusal.
                now = trio.current_time()
                if donor_wait is None or now >= donor_wait:
                    donor = self.peer.requests.pick_donor(net, asked)
                    if donor is None:
                        raise IpamError(
                            f"no free address in {net or self.peer.core.network} anywhere reachable"
                        ) from None
                    asked.add(donor)
                    self.peer.requests.ask_donation(donor, net)
                    self._output()
                    donor_wait = now + DONOR_WAIT
                if donor_wait >= deadline:
                    await self._wait_change(deadline, "no peer gave us address space in time")
                else:
                    with trio.move_on_at(donor_wait):
                        await self.changed.wait()
                continue
            self._step()
            await self._record(addr, ident, deadline)
            prefix = (net or self.peer.core.network).prefixlen
            return f"{ipaddress.IPv4Address(addr)}/{prefix}"

    async def claim(self, cidr: str, ident: str, ns_path: str) -> str:
        ns_path = self._watchable(ns_path)
        iface = ipaddress.IPv4Interface(cidr)
        addr = int(iface.ip)
        deadline = trio.current_time() + WAIT
        while not self.peer.core.ready:
            await self._wait_change(deadline, self.peer.not_ready_reason())
        owner = await self._reachable_owner(addr, min(deadline, trio.current_time() + REACH_WAIT))
        if owner is None:
            raise IpamError(f"{iface.ip} is outside the mesh range {self.peer.core.network}")
        if owner == self.peer.me:
            await self._wait_recordable(deadline)
            self.peer.requests.claim_here(addr, ident, ns_path)
            self._step()
            await self._record(addr, ident, deadline)
            return str(iface)
        request = self.peer.requests.start_claim(owner, addr, ident)
        try:
            self._step()
            with trio.move_on_after(CLAIM_TIMEOUT):
                while self.peer.requests.answer(request) is None:
                    with trio.move_on_after(CLAIM_RESEND) as wait:
                        while self.peer.requests.answer(request) is None:
                            await self.changed.wait()
                    if wait.cancelled_caught:
                        self.peer.requests.resend_claim(request, owner)
                        self._output()
        finally:
            answer = self.peer.requests.end_claim(request)
            self._step()
        if answer is None:
            raise IpamError(f"peer {format_name(owner)} did not answer the claim of {iface.ip}")
        status, msg = answer
        if status == CLAIM_NOT_OWNER:
            raise IpamError(f"{iface.ip}: ownership moved while claiming; try again")
        if status != CLAIM_OK:
            raise IpamError(f"{iface.ip} is already in use ({msg})")
        self.peer.requests.claimed_at(owner, addr, ident, ns_path)
        self._step()
        return str(iface)

    async def _reachable_owner(self, addr: int, until: float) -> bytes | None:
        """The owner of ``addr``, once it is us or within reach (or ``until``
        passed: ``start_claim`` then names it out of reach).  Asked again at
        every change: the share may move meanwhile."""
        while True:
            owner = self.peer.core.owner_of(addr)
            if owner is None or owner == self.peer.me or self.peer.can_reach(owner):
                return owner
            with trio.move_on_at(until) as wait:
                await self.changed.wait()
            if wait.cancelled_caught:
                return owner

    def release(self, ident: str, addrs: list[str] | None = None) -> list[str]:
        gone = self.peer.requests.release(ident, addrs)
        self._step()
        return gone

    def release_address(self, address: str) -> str | None:
        ident = self.peer.requests.release_address(address)
        self._step()
        return ident

    def hand_over(self) -> str:
        done = self.peer.requests.hand_over()
        self._step()
        return done

    def rmpeer(self, peer: bytes) -> int:
        n = self.peer.requests.rmpeer(peer)
        self._step()
        return n

    def held(self, ident: str) -> set[int]:
        return self.peer.requests.held(ident)

    def holder(self, address: str) -> str | None:
        return self.peer.requests.holder(address)

    def owners(self) -> set[bytes]:
        return self.peer.owners()

    def status(self, nick: Callable[[bytes], str], now: float) -> IpamStatus:
        return self.peer.requests.status(nick, now)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
