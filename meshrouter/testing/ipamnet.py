"""IPAM services joined in memory, for tests of the trio service and its core.

Each ``IpamService``'s ``output`` is this net's ``pump``: what its peer's
outbox holds is delivered at once, to whom ``deliver`` lets it reach, and
the receivers settle (their waiting API calls wake).  ``together`` says who
can reach whom (a partition); ``tick`` gives each peer the view a mesh
would.  Runs inside trio (the services wait with trio); no sockets, no root.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio

from meshrouter.ipam.service import RECLAIM_AFTER, IpamService
from meshrouter.mesh.channel import Send, View

Deliver = Callable[[bytes, bytes, bytes], bool]  # (from, to, payload) -> delivered?


class IpamNet:
    def __init__(self, deliver: Deliver | None = None) -> None:
        self.services: dict[bytes, IpamService] = {}
        self.side: dict[bytes, int] = {}  # peer -> which side of a partition it is on
        self.deliver: Deliver = deliver or (lambda src, dst, payload: True)
        self._pumping = False

    def add(
        self,
        me: bytes,
        cidr: str,
        init_count: int,
        state_dir: Path | None = None,
        reclaim_after: float = RECLAIM_AFTER,
    ) -> IpamService:
        """A service for ``me`` (a restarted one, when ``me`` is there already)."""
        svc = IpamService(me, cidr, init_count, state_dir, self.pump, reclaim_after)
        self.services[me] = svc
        return svc

    def together(self, a: bytes, b: bytes) -> bool:
        return self.side.get(a, 0) == self.side.get(b, 0)

    def reachable(self, me: bytes) -> set[bytes]:
        return {p for p in self.services if self.together(me, p)}

    def now(self) -> float:
        return trio.current_time()

    def pump(self) -> None:
        if self._pumping:  # a service's output while we deliver: the loop below sends it
            return
        self._pumping = True
        try:
            while self._move():
                pass
        finally:
            self._pumping = False

    def _move(self) -> bool:
        moved = False
        for src, svc in list(self.services.items()):
            for msg in svc.peer.messages_to_send():
                moved = True
                if isinstance(msg, Send):
                    to = [msg.peer]
                else:
                    to = [p for p in self.reachable(src) if p not in (src, msg.but)]
                for dst in to:
                    self._deliver(src, dst, msg.payload)
        return moved

    def _deliver(self, src: bytes, dst: bytes, payload: bytes) -> None:
        far = self.services.get(dst)
        if far is None or not self.together(src, dst) or not self.deliver(src, dst, payload):
            return
        far.peer.receive_untrusted(src, payload, self.now())
        far.settle()

    def greet(self, a: bytes, b: bytes) -> None:
        """A connection between ``a`` and ``b`` comes up: each sends its hello."""
        for x, y in ((a, b), (b, a)):
            for payload in self.services[x].peer.hello(y, "", self.now()):
                self._deliver(x, y, payload)
        self.pump()

    def partition(self, side: dict[bytes, int]) -> None:
        """Move to a new partition: peers newly apart lose their connection,
        peers newly together greet each other."""
        peers = list(self.services)
        before = {(a, b) for a in peers for b in peers if self.together(a, b)}
        self.side = side
        for a in peers:
            for b in peers:
                if a != b and (a, b) in before and not self.together(a, b):
                    self.services[a].peer.peer_down(b)
        for a in peers:
            for b in peers:
                if a < b and (a, b) not in before and self.together(a, b):
                    self.greet(a, b)

    def tick(self, me: bytes, now: float, reachable: set[bytes] | None = None) -> None:
        reach = self.reachable(me) if reachable is None else reachable
        svc = self.services[me]
        svc.peer.tick(now, View(reachable=reach, neighbours=reach - {me}))
        svc.settle()
        self.pump()

    def tick_all(self) -> None:
        for me in list(self.services):
            self.tick(me, self.now())
