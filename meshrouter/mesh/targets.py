"""Connection targets and retry backoff (sans-IO), after weaveworks/mesh's connection maker.

A target is an address the operator (``mesh launch PEER``, ``mesh connect``)
asked us to keep a connection to.  A failed attempt is retried after a delay
that grows x1.5 per failure up to a cap, scaled by a jitter factor the shell
draws at random (so the core holds no randomness) to keep a mesh that restarts
together from reconnecting in lockstep.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from meshrouter.base.inputs import format_address, split_address
from meshrouter.contract.status import TargetState

INITIAL_DELAY = 0.5
MAX_DELAY = 15.0
GROWTH = 1.5


@dataclass
class Target:
    address: str  # canonical host:port
    state: TargetState = TargetState.WAITING
    peer: str | None = None  # peer name once connected
    attempts: int = 0
    last_error: str | None = None
    next_try: float = 0.0
    delay: float = 0.0
    discovered: bool = False  # learnt from gossip rather than given by the operator


class Targets:
    def __init__(self, default_port: int) -> None:
        self.default_port = default_port
        self._targets: dict[str, Target] = {}

    def canonical(self, text: str) -> str:
        return format_address(*split_address(text, self.default_port))

    def add(self, text: str, now: float) -> Target:
        addr = self.canonical(text)
        t = self._targets.get(addr)
        if t is None:
            t = self._targets[addr] = Target(addr, next_try=now)
        elif t.discovered:
            t.discovered = False  # the operator asked for it: keep it for good
        if t.state is TargetState.WAITING:
            t.next_try = now  # asked again: try now
            t.delay = 0.0
        return t

    def sync_discovered(self, wanted: dict[str, float], now: float) -> None:
        """Make the discovered targets ``wanted`` (addresses of peers we lack a
        direct connection to, each with when to try it first), keeping the
        backoff of those already there."""
        for addr, first in wanted.items():
            if addr not in self._targets:
                self._targets[addr] = Target(addr, next_try=first, discovered=True)
        for addr, t in list(self._targets.items()):
            if t.discovered and addr not in wanted and t.state is not TargetState.CONNECTING:
                del self._targets[addr]

    def remove(self, text: str) -> Target | None:
        return self._targets.pop(self.canonical(text), None)

    def get(self, addr: str) -> Target | None:
        return self._targets.get(addr)

    def __iter__(self) -> Iterator[Target]:
        return iter(list(self._targets.values()))

    def __len__(self) -> int:
        return len(self._targets)

    def due(self, now: float, limit: int | None = None) -> list[Target]:
        """Targets to attempt now (at most ``limit``, the longest waiting
        first); they move to 'connecting'."""
        out: list[Target] = []
        ready = [t for t in self._targets.values() if t.state is TargetState.WAITING]
        for t in sorted(ready, key=lambda t: t.next_try):
            if t.next_try <= now and (limit is None or len(out) < limit):
                t.state = TargetState.CONNECTING
                t.attempts += 1
                out.append(t)
        return out

    def postpone(self, addr: str, until: float) -> None:
        """A due target that should not be attempted yet, and did not fail."""
        t = self._targets.get(addr)
        if t is not None and t.state is TargetState.CONNECTING:
            t.state, t.next_try = TargetState.WAITING, until
            t.attempts -= 1

    def next_deadline(self) -> float:
        waits = [t.next_try for t in self._targets.values() if t.state is TargetState.WAITING]
        return min(waits, default=math.inf)

    def connected(self, addr: str, peer: str) -> None:
        t = self._targets.get(addr)
        if t is not None:
            t.state, t.peer, t.last_error, t.delay = TargetState.CONNECTED, peer, None, 0.0

    def failed(self, addr: str, error: str, now: float, jitter: float) -> None:
        """An attempt failed or a connection ended.  ``jitter`` is drawn from [0.5, 1.5)."""
        t = self._targets.get(addr)
        if t is None:
            return
        t.delay = INITIAL_DELAY if t.delay == 0.0 else min(t.delay * GROWTH, MAX_DELAY)
        t.state, t.peer, t.last_error = TargetState.WAITING, None, error
        t.next_try = now + t.delay * jitter
