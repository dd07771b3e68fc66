"""In-memory doubles of what the mesh core talks to, and a network of mesh cores.

``MeshNet`` joins ``Mesh`` cores as the router shell would, but in memory:
``dial(a, b)`` opens a connection pair and ``pump()`` moves control bytes and
carries out the cores' actions until nothing moves.  Each node runs the real
IPAM (``IpamPeer``) and DNS (``DnsChannel``) channels beside its mesh core
(``ipam="fake"`` puts a ``FakeIpam`` in IPAM's place, to test the relaying
itself), and a fast path when ``fastpath`` makes one.  No sockets, no trio,
no root: time is whatever the test says.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from meshrouter.base.errors import BadPacket
from meshrouter.contract.status import ConnectionStatus
from meshrouter.dns.channel import DnsChannel
from meshrouter.dns.records import Records
from meshrouter.fastpath.channel import FastPathChannel
from meshrouter.fastpath.core import FastPath
from meshrouter.ipam.peer import IpamPeer
from meshrouter.mesh.actions import (
    Close,
    Evicted,
    Flush,
    LinkUp,
    Readmitted,
    Redial,
    TargetsChanged,
)
from meshrouter.mesh.channel import Channel, Message, Outbox, View
from meshrouter.mesh.core import Mesh
from meshrouter.proto.cert import Trust
from meshrouter.proto.control import MessageType
from meshrouter.proto.wire import parse_header_untrusted
from meshrouter.testing.control import MeshCa, psk


@dataclass
class FakeIpam:
    """A stand-in IPAM channel: records what reaches it, sends what the test
    says (``send``), raises BadPacket for payloads listed in ``bad``."""

    ring: bytes | None = None
    received: list[tuple[bytes, bytes]] = field(default_factory=list)
    bad: set[bytes] = field(default_factory=set)
    ticks: int = 0
    removed: list[bytes] = field(default_factory=list)
    owner_names: set[bytes] = field(default_factory=set)
    out: Outbox = field(default_factory=Outbox)

    mtype = MessageType.IPAM
    relayed: int | None = MessageType.IPAM_RELAYED
    name = "ipam"
    what = "IPAM message"
    close_on_bad = True

    def hello(self, peer: bytes, ip: str, now: float) -> list[bytes]:
        return [] if self.ring is None else [self.ring]

    def receive_untrusted(self, peer: bytes, payload: bytes, now: float) -> None:
        if payload in self.bad:
            raise BadPacket("bad test payload")
        self.received.append((peer, payload))

    def tick(self, now: float, view: View) -> None:
        self.ticks += 1

    def peer_down(self, peer: bytes) -> None:
        pass

    def peer_gone(self, peer: bytes) -> None:
        pass

    def messages_to_send(self) -> list[Message]:
        return self.out.take()

    def send(self, peer: bytes, payload: bytes) -> None:
        self.out.send(peer, payload)

    def rmpeer(self, peer: bytes) -> int:
        self.removed.append(peer)
        return 1

    def owners(self) -> set[bytes]:
        return set(self.owner_names)


def name(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, 0, n])


def address(n: int) -> str:
    return f"198.18.0.{n}:6783"


@dataclass
class Node:
    mesh: Mesh
    ipam: FakeIpam | IpamPeer
    dns: DnsChannel
    host: str
    fastpath: FastPathChannel | None = None


MakeFastPath = Callable[[int], FastPath | None]


class MeshNet:
    """Mesh cores joined by in-memory connections."""

    def __init__(
        self,
        count: int,
        *,
        password: bytes = b"secret",
        seed: int = 0,
        ipam: Literal["real", "fake"] = "real",
        ipam_range: str = "10.32.0.0/24",
        fastpath: MakeFastPath | None = None,
        ca: MeshCa | None = None,
    ) -> None:
        rng = random.Random(seed)
        self.ca = ca  # every node on a certificate of this CA (and no password)
        self.evicted: list[tuple[int, bytes]] = []  # (node, peer) of Evicted actions
        self.now = 0.0
        self.count = count
        self._ipam_kind = ipam
        self._ipam_range = ipam_range
        self._fastpath = fastpath
        self.nodes: list[Node] = []
        for i in range(1, count + 1):
            self.nodes.append(self._node(i, password, rng.getrandbits(32)))
        # (mesh index, conn index) <-> (mesh index, conn index)
        self.wires: dict[tuple[int, int], tuple[int, int]] = {}
        self.closed: set[tuple[int, int]] = set()
        self.targets_changed = 0
        self.links_up = 0
        self.redials: list[tuple[int, str]] = []  # (node, address) asked, dialled by tick()
        self.probes: list[tuple[int, str, bytes]] = []  # fast-path probes: (from, to host, dgram)

    def _node(self, i: int, password: bytes, seed: int) -> Node:
        ipam: FakeIpam | IpamPeer
        if self._ipam_kind == "fake":
            ipam = FakeIpam()
        else:
            ipam = IpamPeer(name(i), self._ipam_range, init_count=self.count, reclaim_after=0)
            ipam.restored({}, {})
        dns = DnsChannel(Records(name(i)))
        core = self._fastpath(i) if self._fastpath is not None else None
        fastpath = FastPathChannel(core) if core is not None else None
        channels: list[Channel] = [ipam, dns] + ([fastpath] if fastpath is not None else [])
        certs = None
        if self.ca is not None:
            host, key = self.ca.host(i)
            certs = (host, key, Trust.of([self.ca.cert]))
        mesh = Mesh(
            name=name(i),
            nickname=f"host{i}",
            psk=psk(password),
            certs=certs,
            password=self.ca is None,
            port=6783,
            ipalloc_range=self._ipam_range,
            peers=[],
            rng=random.Random(seed),
            channels=channels,
        )
        return Node(mesh, ipam, dns, f"198.18.0.{i}", fastpath)

    def restart(self, i: int, *, password: bytes = b"secret", seed: int = 99) -> None:
        """Node ``i`` comes back as a new process (same name, new uid).  Its old
        connections vanish without a word, as when a host dies: the far ends
        only find out from the new connection or their timers."""
        self.nodes[i - 1] = self._node(i, password, seed)
        for key in [k for k in self.wires if k[0] == i]:
            far = self.wires.pop(key)
            self.wires.pop(far, None)

    def mesh(self, i: int) -> Mesh:
        return self.nodes[i - 1].mesh

    def dns(self, i: int) -> DnsChannel:
        return self.nodes[i - 1].dns

    def ipam(self, i: int) -> IpamPeer:
        ipam = self.nodes[i - 1].ipam
        assert isinstance(ipam, IpamPeer), "MeshNet(ipam='fake') has no real IPAM"
        return ipam

    def fake_ipam(self, i: int) -> FakeIpam:
        ipam = self.nodes[i - 1].ipam
        assert isinstance(ipam, FakeIpam), "MeshNet(ipam='fake') has the fake IPAM"
        return ipam

    def connections(self, i: int) -> list[ConnectionStatus]:
        """Node ``i``'s connections as its status shows them (with the fast path's say)."""
        conns = self.mesh(i).status(self.now)["connections"]
        node = self.nodes[i - 1]
        if node.fastpath is not None:
            node.fastpath.annotate(conns)
        return conns

    def dial(self, a: int, b: int, target: str | None = None) -> tuple[int, int]:
        """A TCP connection from node ``a`` to node ``b``; returns both indices."""
        ma, mb = self.mesh(a), self.mesh(b)
        ia = ma.open_connection(
            initiator=True,
            remote=(self.nodes[b - 1].host, 6783),
            now=self.now,
            ephemeral=bytes([a, b]) * 16,
            target=target,
        )
        ib = mb.open_connection(
            initiator=False,
            remote=(self.nodes[a - 1].host, 40000 + a),
            now=self.now,
            ephemeral=bytes([b, a]) * 16,
        )
        assert ia is not None
        assert ib is not None
        self.wires[(a, ia)] = (b, ib)
        self.wires[(b, ib)] = (a, ia)
        self.pump()
        return ia, ib

    def _apply(self, i: int) -> None:
        node = self.nodes[i - 1]
        node.mesh.flush()
        if node.fastpath is not None:
            probes, _changed = node.fastpath.take_work()
            self.probes += [(i, host, dgram) for host, dgram in probes]
        for action in node.mesh.take_actions():
            if isinstance(action, Close):
                self._move(i, action.index)
                self._hang_up(i, action.index)
            elif isinstance(action, Flush):
                pass  # pump moves every connection's bytes anyway
            elif isinstance(action, TargetsChanged):
                self.targets_changed += 1
            elif isinstance(action, LinkUp):
                self.links_up += 1
            elif isinstance(action, Redial):
                self.redials.append((i, action.address))
            elif isinstance(action, Readmitted):
                node.dns.records.banned.discard(action.name)
            elif isinstance(action, Evicted):
                self.evicted += [(i, n) for n in action.names]
                for n in action.names:
                    node.dns.records.ban_origin(n)

    def _move(self, i: int, index: int) -> bool:
        far = self.wires.get((i, index))
        data = self.mesh(i).data_to_send(index)
        if not data or far is None or far in self.closed:
            return False
        j, jdx = far
        if self.mesh(j).is_open(jdx):
            self.mesh(j).receive_data(jdx, data, self.now)
        return True

    def _hang_up(self, i: int, index: int) -> None:
        """The shell ends a closed connection's task: the far end sees EOF."""
        if (i, index) in self.closed:
            return
        self.closed.add((i, index))
        self.mesh(i).connection_lost(index, self.now)
        far = self.wires.get((i, index))
        if far is not None and far not in self.closed:
            j, jdx = far
            self.mesh(j).receive_eof(jdx, self.now)
            self.closed.add(far)
            self.mesh(j).connection_lost(jdx, self.now)

    def pump(self) -> None:
        for _ in range(1000):
            moved = False
            for node in self.nodes:
                node.mesh.flush()  # what a channel was asked outside a mesh event
            for i, index in list(self.wires):
                if (i, index) in self.closed:
                    continue
                moved |= self._move(i, index)
                if not self.mesh(i).is_open(index):
                    self._move(i, index)
                    self._hang_up(i, index)
                    moved = True
            for i in range(1, len(self.nodes) + 1):
                self._apply(i)
            if not moved:
                return
        raise AssertionError("the meshes kept talking")

    def exchange_heartbeats(self, a: int, b: int) -> None:
        """Carry UDP heartbeats between ``a`` and ``b`` through their real sessions
        (twice each way, so each also hears that the other hears it)."""
        for _ in range(2):
            for x, y in ((a, b), (b, a)):
                tx = self.mesh(x).links.by_name[name(y)].session
                rx_link = self.mesh(y).links.by_name[name(x)]
                rx = rx_link.session
                for dgram in tx.heartbeats(self.now, probe=False):
                    _t, _i, counter, seg, nseg = parse_header_untrusted(dgram)
                    plain = rx.receive_untrusted(dgram, counter, seg, nseg, self.now)
                    assert plain is not None
                    # As the forwarder does: the peer is where its datagram came from.
                    rx_link.udp_addr = (self.nodes[x - 1].host, 6783)
                    rx.on_heartbeat(plain, len(dgram), self.now)

    def tick(self, dt: float = 0.5) -> None:
        self.now += dt
        for node in self.nodes:
            node.mesh.tick(self.now)
        self.pump()
        while self.redials:  # the shell dials these at once
            i, addr = self.redials.pop(0)
            host = addr.rsplit(":", 1)[0]
            j = next(k for k, n in enumerate(self.nodes, 1) if n.host == host)
            self.dial(i, j, target=addr)
