"""The fast path on the mesh (sans-IO): ``FastPath`` as a mesh channel.

A new peer is told whether we trust it; its reports of our probes arrive as
FASTPATH messages (a bad one is counted, never fatal); each tick's reports go
to their peers.  What the shell must do on the host (send probes through the
kernel path, rewrite forwarding entries) waits in ``take_work``.
"""

from __future__ import annotations

from meshrouter.base.names import parse_name
from meshrouter.contract.status import ConnectionStatus
from meshrouter.fastpath.core import FastPath
from meshrouter.mesh.channel import Message, Outbox, View
from meshrouter.proto.control import MessageType


class FastPathChannel:
    mtype = MessageType.FASTPATH
    relayed = None
    name = "fastpath"
    what = "FASTPATH message"
    close_on_bad = False

    def __init__(self, core: FastPath) -> None:
        self.core = core
        self._out = Outbox()
        self._probes: list[tuple[str, bytes]] = []
        self._changed = False

    def hello(self, peer: bytes, ip: str, now: float) -> list[bytes]:
        return [self.core.connection_up(peer, ip)]

    def receive_untrusted(self, peer: bytes, payload: bytes, now: float) -> None:
        self.core.on_message_untrusted(peer, payload)

    def tick(self, now: float, view: View) -> None:
        work = self.core.tick(now)
        for peer, payload in work.reports:
            if peer in view.neighbours:
                self._out.send(peer, payload)
        self._probes += work.probes
        self._changed |= bool(work.changes)

    def peer_down(self, peer: bytes) -> None:
        self._changed |= bool(self.core.connection_down(peer))

    def peer_gone(self, peer: bytes) -> None:
        pass

    def messages_to_send(self) -> list[Message]:
        return self._out.take()

    def annotate(self, connections: list[ConnectionStatus]) -> None:
        """Fill in each connection's path (``kernel`` or ``sleeve``)."""
        for conn in connections:
            peer = conn.get("peer")
            if peer:
                conn["path"] = self.core.path_of(parse_name(peer))

    def take_work(self) -> tuple[list[tuple[str, bytes]], bool]:
        """Probes to send (ip, VXLAN datagram), and whether any peer's path changed."""
        probes, changed = self._probes, self._changed
        self._probes, self._changed = [], False
        return probes, changed
