"""The connection maker (sans-IO), after weaveworks/mesh's: the operator's
targets and those discovered from the topology, which to dial when, and
what a failed attempt costs (``targets``: backoff x1.5 to a cap, jittered by
the shell's randomness).  At ``--conn-limit`` live connections, a due
target waits as if it had failed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from meshrouter.mesh.actions import TargetsChanged

if TYPE_CHECKING:
    from meshrouter.mesh.core import Mesh

log = logging.getLogger("meshrouter")


class Maker:
    def __init__(self, mesh: Mesh) -> None:
        self.m = mesh
        # Addresses the operator forgot: not dialled again when gossip names
        # them (a peer's own record says where it listens), until connected again.
        self.forgotten: set[str] = set()

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
        """Addresses to dial now (refused ones wait, at the connection limit)."""
        out: list[str] = []
        for t in self.m.targets.due(now):
            if len(self.m.conns) + len(out) >= self.m.conn_limit:
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

    def sync_discovered(self, now: float) -> None:
        """Dial every peer the topology knows that we have no connection to."""
        operator = {t.address for t in self.m.targets if not t.discovered}
        wanted: set[str] = set()
        for name in self.m.gossip.records:
            if name != self.m.me and name not in self.m.peers:
                wanted |= self.m.gossip.addresses_of(name) - operator - self.forgotten
        before = len(self.m.targets)
        self.m.targets.sync_discovered(wanted, now)
        if len(self.m.targets) != before:
            self.m.act(TargetsChanged())
