"""The connection maker (sans-IO), after weaveworks/mesh's: the operator's
targets and those discovered from the topology, which to dial when, and
what a failed attempt costs (``targets``: backoff x1.5 to a cap, jittered by
the shell's randomness).  At ``--conn-limit`` live connections, a due
target waits as if it had failed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from typing import TYPE_CHECKING

from meshrouter.base.inputs import split_address
from meshrouter.contract.status import TargetState
from meshrouter.mesh.actions import TargetsChanged

if TYPE_CHECKING:
    from meshrouter.mesh.core import Mesh

log = logging.getLogger("meshrouter")

MAX_DIALING = 8  # dials and handshakes of ours in flight at once
DEFER = 6.0  # the smaller name waits 3 to 9 s before it dials a discovered peer


class Maker:
    def __init__(self, mesh: Mesh) -> None:
        self.m = mesh
        # Addresses the operator forgot: not dialled again when gossip names
        # them (a peer's own record says where it listens), until connected again.
        self.forgotten: set[str] = set()
        # Peers whose certificate was revoked: never dialled when gossip names
        # them (a new certificate for the name, seen in a handshake, lifts it).
        self.evicted: set[bytes] = set()

    def evict(self, names: set[bytes]) -> None:
        self.evicted |= names
        for name in names:
            for addr in self.m.gossip.addresses_of(name):
                t = self.m.targets.get(addr)
                if t is not None and t.discovered:
                    self.m.targets.remove(addr)

    def connect(self, address: str, now: float) -> str:
        """The operator asks for a connection target.  Raises ValueError on a bad address."""
        t = self.m.targets.add(address, now)
        self.forgotten.discard(t.address)
        self.m.act(TargetsChanged())
        log.info("target %s added", t.address)
        return t.address

    def forget(self, address: str, now: float) -> str | None:
        """Drop an operator's target and its connection; None if it was none."""
        t = self.m.targets.remove(address)
        if t is None or t.discovered:
            return None
        log.info("target %s forgotten", t.address)
        self.forgotten.add(t.address)
        for conn in list(self.m.conns.values()):
            if conn.target == t.address:
                self.m.close_connection(conn, "peer forgotten by operator", now)
        return t.address

    def dials_due(self, now: float) -> list[str]:
        """Addresses to dial now (refused ones wait, at the connection
        limit): at most ``MAX_DIALING`` dials and handshakes in flight, so a
        router that learns of N peers at once opens them a few at a time."""
        busy = sum(1 for t in self.m.targets if t.state is TargetState.CONNECTING)
        busy += sum(1 for c in self.m.conns.values() if c.initiator and c.result is None)
        # Hosts that are dialling us (their handshake under way): a discovered
        # target there waits for it, or its dial would make a duplicate.
        calling = {
            _host(c.remote[0]) for c in self.m.conns.values() if not c.initiator and not c.name
        }
        out: list[str] = []
        for t in self.m.targets.due(now, limit=max(0, MAX_DIALING - busy)):
            if t.discovered and _host(split_address(t.address, 1)[0]) in calling:
                self.m.targets.postpone(t.address, now + DEFER / 2)
            elif len(self.m.conns) + len(out) >= self.m.conn_limit:
                self.failed(t.address, "at the connection limit (--conn-limit)", now)
            else:
                out.append(t.address)
        return out

    def next_dial_at(self) -> float:
        return self.m.targets.next_deadline()

    def dial_failed(self, address: str, reason: str, now: float) -> None:
        self.failed(address, reason, now)

    def failed(self, address: str, reason: str, now: float) -> None:
        self.m.targets.failed(address, reason, now, jitter=self.m.rng.uniform(0.5, 1.5))
        t = self.m.targets.get(address)
        if t is not None:
            log.info(
                "connection to %s failed: %s; retrying in %.1fs", address, reason, t.next_try - now
            )
        self.m.act(TargetsChanged())

    def _chosen(self, operator: set[str]) -> list[bytes]:
        """The peers to dial of those the topology knows and we lack a
        connection to: all of them while ``--conn-limit`` leaves room; else
        as many as it does, chosen for diversity rather than by launch
        order: peers we have no route to first, then by a rank both ends of
        each pair compute alike (a hash of the two names), so the mesh grows
        as a random graph of bounded degree, whose paths are short and that
        a few lost connections do not cut.  A reachable peer whose record
        shows as many connections as our limit is left alone (it would
        refuse us, if its limit is ours)."""
        names = [
            n
            for n in self.m.gossip.records
            if n != self.m.me and n not in self.m.peers and n not in self.evicted
        ]
        busy = len(self.m.conns) + sum(
            1 for t in self.m.targets if not t.discovered and t.state is not TargetState.CONNECTED
        )
        room = self.m.conn_limit - busy
        if len(names) <= room:
            return names
        reachable = self.m.gossip.reachable()
        records = self.m.gossip.records

        def full(n: bytes) -> bool:  # by its record, at a limit like ours: it would refuse
            return len({c.peer for c in records[n].connections} - {n}) >= self.m.conn_limit

        def rank(n: bytes) -> tuple[bool, bytes]:
            pair = b"".join(sorted((n, self.m.me)))
            return n in reachable, hashlib.blake2b(pair, digest_size=8).digest()

        connecting = {
            n
            for n in names
            if any(
                (t := self.m.targets.get(a)) is not None and t.state is TargetState.CONNECTING
                for a in self.m.gossip.addresses_of(n) - operator
            )
        }
        rest = sorted(
            (n for n in names if n not in connecting and not (n in reachable and full(n))),
            key=rank,
        )
        return [*connecting, *rest[: max(0, room - len(connecting))]]

    def _dialable(self, addr: str) -> bool:
        """A gossiped address the way a target holds one (``host:port``,
        canonical): a peer's record may say anything, and what is dialled
        and compared later must parse."""
        try:
            return self.m.targets.canonical(addr) == addr
        except ValueError:
            return False

    def sync_discovered(self, now: float) -> None:
        """Dial every peer the topology knows that we have no connection to.
        Of two peers that learn of each other, the one with the larger name
        dials (within a second: a mesh launched together spreads its dials);
        the other waits ``DEFER`` seconds first, and dials only if no
        connection came meanwhile (one way may be blocked), so the two
        seldom dial each other at once and close one as a duplicate."""
        operator = {t.address for t in self.m.targets if not t.discovered}
        wanted: dict[str, float] = {}
        for name in self._chosen(operator):
            # A peer's other addresses (another family, say) wait their turn.
            for k, addr in enumerate(sorted(self.m.gossip.addresses_of(name) - operator)):
                if addr in self.forgotten or not self._dialable(addr):
                    continue
                if self.m.targets.get(addr) is not None:
                    wanted[addr] = now  # known already: it keeps its own schedule
                elif name < self.m.me:
                    wanted[addr] = now + self.m.rng.uniform(0.0, 1.0) + 2 * DEFER * k
                else:
                    wanted[addr] = now + DEFER * (0.5 + self.m.rng.uniform(0.0, 1.0) + 2 * k)
        before = len(self.m.targets)
        self.m.targets.sync_discovered(wanted, now)
        if len(self.m.targets) != before:
            self.m.act(TargetsChanged())


def _host(host: str) -> str:
    """One spelling of a host: an IPv4 peer on a dual-stack socket shows as
    ``::ffff:a.b.c.d``."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)
