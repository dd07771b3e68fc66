"""The mesh core (sans-IO): peer lifecycle, tie-breaks, targets, discovery, gossip, relaying.

The trio shell (``router``) owns the sockets and the clock; this class makes
every decision.  The shell feeds it inputs, each with ``now``:

* ``open_connection`` when a TCP connection is accepted or dialled, then the
  connection's bytes (``receive_data``), end of stream (``receive_eof``) and
  timers (``get_timer``/``handle_timer``), and ``connection_lost`` when its
  task has ended;
* ``dials_due``/``dial_failed`` for the connection maker;
* ``tick`` twice a second; operator requests (``connect``, ``forget``,
  ``rmpeer``, ``close_all``).

and carries out what ``take_actions()`` returns: ``Flush`` (a connection has
bytes to send: ``data_to_send``), ``Close`` (flush, then end the connection's
task), ``TargetsChanged`` (wake the connection maker), ``LinkUp`` (a link was
published: let the forwarder send its first heartbeat now).

Each connection is in one ``ConnState``; it moves only along ``TRANSITIONS``
(h11's ``_state.py`` is the model)::

    HANDSHAKE --handshake done--> PENDING --UDP both ways--> ESTABLISHED
        |                            ^ |                          |
        |                            | +-------UDP lost-----------+
        +--------------------------- close (any state) ---------------> CLOSED

Rules that span connections:

* Duplicate connections (both peers dialled): keep the one dialled by the
  peer with the larger name; both ends compute the same answer.  The loser
  hands its target to the winner.  A connection from a restarted peer (new
  uid) replaces the old one.
* Only handshaken connections are *peers*; their ``Link`` (the data path) is
  published in the ``LinkTable`` the forwarder reads, and withdrawn when the
  connection closes.  Our own gossip record lists them, established or not.
* Subsystems (IPAM, DNS, the fast path) are *channels* (``channel``): each
  owns one message type, and the core dispatches from one table, sends each
  new peer their ``hello``, ticks them and drains their outboxes.  A
  channel's message to a peer with no direct connection is relayed like
  data: a route header (origin, destination, hops left) in front, passed hop
  by hop (IPAM's, as IPAM_RELAYED).

Randomness (receiver indices, the uid, backoff jitter) comes from the ``rng``
the shell passes in; time only ever comes in as ``now``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from meshrouter.base.constants import CONTROL_HEARTBEAT_QUIET, HEARTBEAT_INTERVAL
from meshrouter.base.errors import BadInput, LocalProtocolError
from meshrouter.base.inputs import format_address
from meshrouter.base.lograte import Complaints
from meshrouter.base.names import format_name
from meshrouter.contract.status import (
    ConnState,
    MeshStatus,
    TargetState,
)
from meshrouter.dataplane.link import Link, LinkTable
from meshrouter.dataplane.session import DataSession
from meshrouter.mesh.actions import (
    Action,
    Close,
    Flush,
    LinkUp,
    PasswordRetired,
    Readmitted,
    TargetsChanged,
)
from meshrouter.mesh.announce import Announcer
from meshrouter.mesh.certs import CERT_EPOCH, RETIRED, REVOKED, Certs
from meshrouter.mesh.channel import Channel, View
from meshrouter.mesh.channels import Channels, Handler
from meshrouter.mesh.maker import Maker
from meshrouter.mesh.nat import Reflection
from meshrouter.mesh.rotation import Rotation
from meshrouter.mesh.statusview import mesh_status
from meshrouter.mesh.targets import Targets
from meshrouter.mesh.topology import RELAY_MAY, Gossip
from meshrouter.mesh.tunnel import Tunnels
from meshrouter.proto.cert import Certificate, Trust
from meshrouter.proto.control import (
    ConnectionClosed,
    ControlConnection,
    HandshakeComplete,
    MessageReceived,
    MessageType,
    State,
)
from meshrouter.proto.crypto import SUITES
from meshrouter.proto.handshake import (
    AUTH_CERT,
    AUTH_PASSWORD,
    NO_PASSWORD,
    HandshakeResult,
    Identity,
)
from meshrouter.proto.keyring import KeyRing

QUIET_HEARTBEATS_VERSION = 2  # peers from this protocol version count UDP as liveness
E2E_VERSION = 2  # ... and open frames sealed for them alone inside a relayed message
SUPERSEDED_GRACE = 5.0  # a re-keyed connection the dialler did not close by then: closed
log = logging.getLogger("meshrouter")


class Input(Enum):
    HANDSHAKE_DONE = "handshake done"
    UDP_UP = "UDP heard both ways"
    UDP_DOWN = "UDP lost"
    CLOSE = "close"


TRANSITIONS: dict[ConnState, dict[Input, ConnState]] = {
    ConnState.HANDSHAKE: {
        Input.HANDSHAKE_DONE: ConnState.PENDING,
        Input.CLOSE: ConnState.CLOSED,
    },
    ConnState.PENDING: {
        Input.UDP_UP: ConnState.ESTABLISHED,
        Input.CLOSE: ConnState.CLOSED,
    },
    ConnState.ESTABLISHED: {
        Input.UDP_DOWN: ConnState.PENDING,
        Input.CLOSE: ConnState.CLOSED,
    },
    ConnState.CLOSED: {},
}


# -- what the shell gives and gets ------------------------------------------------


class Rng(Protocol):
    def getrandbits(self, k: int, /) -> int: ...
    def uniform(self, a: float, b: float, /) -> float: ...


@dataclass(eq=False)
class Conn:
    """The core's record of one control connection."""

    index: int  # our receiver index: unique among live connections
    control: ControlConnection
    remote: tuple[str, int]
    initiator: bool
    target: str | None  # the target this connection serves, if any
    state: ConnState = ConnState.HANDSHAKE
    name: bytes = b""  # the peer's, once the handshake is done
    link: Link | None = None
    listen_addr: str = ""  # where the peer accepts connections, host:port
    connected_at: float = 0.0
    clock_skew: float | None = None  # the peer's wall clock minus ours, seconds
    peer_version: str = ""  # its software version, from CLOCK
    key_epoch: int = 0  # the epoch of the mesh key the handshake proved
    peer_auth: int = 0  # how the peer can authenticate (its HELLO, then AUTH messages)
    seen_as: tuple[str, str] = ("", "")  # our TCP and UDP addresses as the peer sees them
    told_seen: tuple[str, str] | None = None  # what we last told it of its own
    rekey_asked: float = -1e18  # when we last dialled a replacement under a newer key
    superseded_at: float | None = None  # replaced by a re-keyed one; the dialler closes it
    # Through a relay (``tunnel``): the relay's name, the peer's, the tunnel's
    # id (the dialler's index), where UDP is punched to, since when it tries.
    via: bytes | None = None
    tunnel_to: bytes = b""
    tunnel_id: int = 0
    punch_to: tuple[str, int] | None = None
    punch_since: float = 0.0
    punch_failed: bool = False  # no UDP through within PUNCH_TIMEOUT: kept, sealing end to end

    @property
    def result(self) -> HandshakeResult | None:
        return self.control.result

    @property
    def label(self) -> str:
        res = self.control.result
        return "peer" if res is None else f"{format_name(self.name)}({res.peer.nickname})"

    @property
    def where(self) -> str:
        return format_address(*self.remote)


def _new_link(conn: Conn, res: HandshakeResult) -> Link:
    """The data path of a connection whose handshake is done: a new session
    under its keys.  The dialler sends to the peer's UDP port at the address
    it dialled; the side that was dialled sends nothing until the peer's first
    datagram says where it is.  Its TCP source may be a NAT's address, and a
    datagram sent there first would take the port mapping the peer's own
    datagrams need (the NAT would move them to another port, per destination:
    a NAT that maps per destination, made by us)."""
    keys = res.keys
    return Link(
        index=conn.index,
        peer=conn.name,
        label=conn.label,
        session=DataSession(
            suite=keys.suite,
            send_key=keys.data_send,
            recv_key=keys.data_recv,
            local_index=conn.index,
            peer_index=res.peer_recv_index,
        ),
        udp_addr=_first_udp_addr(conn, res),
        e2e=keys.version >= E2E_VERSION,
        punch_to=conn.punch_to,
    )


def _first_udp_addr(conn: Conn, res: HandshakeResult) -> tuple[str, int] | None:
    if conn.via is not None:  # both sides at once: the holes are punched so
        return conn.punch_to
    return (conn.remote[0], res.peer.udp_port) if conn.initiator else None


def _replaced_by(conn: Conn | None) -> str:
    if conn is not None and conn.key_epoch == CERT_EPOCH:
        return "replaced by a connection made by certificate"
    return "re-keyed under the rotated mesh password"


class Mesh:
    def __init__(
        self,
        *,
        name: bytes,
        nickname: str,
        psk: bytes,
        port: int,
        ipalloc_range: str,
        peers: list[str],
        rng: Rng,
        channels: Sequence[Channel] = (),
        conn_limit: int = 100,
        gc_after: float = 60.0,
        now: float = 0.0,
        version: str = "",
        keys: KeyRing | None = None,
        certs: tuple[Certificate, bytes, Trust] | None = None,
        password: bool = True,
    ) -> None:
        self.me = name
        self.name = format_name(name)
        self.nickname = nickname
        self.keys = keys if keys is not None else KeyRing(current=psk)
        self.rng = rng
        self.uid = rng.getrandbits(64)
        # A mesh on certificates: who we are is what the certificate says.
        self.certs = Certs(self, *certs) if certs is not None else None
        self.password = password  # the password is accepted (a mesh without certificates)
        auth = (AUTH_PASSWORD if password else 0) | (AUTH_CERT if certs is not None else 0)
        if not auth:
            raise LocalProtocolError("a mesh needs a password or a certificate")
        self.identity = Identity(
            name=name,
            nickname=nickname,
            uid=self.uid,
            udp_port=port,
            ipalloc_range=ipalloc_range,
            auth=auth,
        )
        self.gossip = Gossip(name, self.uid, nickname, gc_after=gc_after)
        self.announce = Announcer(self, now)
        self.rotation = Rotation(self)
        self.maker = Maker(self)
        own: dict[int, Handler] = {
            MessageType.GOSSIP: self.announce.on_gossip,
            MessageType.CLOCK: self.announce.on_clock,
            MessageType.ROTATE: self.rotation.on_message,
        }
        self.reflection = Reflection(self)
        self.tunnels = Tunnels(self)
        own[MessageType.TUNNEL] = self.tunnels.on_message
        own[MessageType.OBSERVED] = self.reflection.on_message
        own[MessageType.REVOKE] = self._on_revoke
        own[MessageType.AUTH] = self._on_auth
        own[MessageType.RETIRE_PASSWORD] = self._on_retire_password
        self.hub = Channels(self, channels, own)
        self.channels = self.hub.channels
        self._handlers = self.hub.handlers
        self.conn_limit = conn_limit
        self.targets = Targets(port)
        self.counters: Counter[str] = Counter()
        for p in peers:
            try:
                self.targets.add(p, now)
            except BadInput as exc:  # a saved target no release would take now: never fatal
                self.counters["targets_skipped"] += 1
                log.warning("skipping connection target %r: %s", p, exc)
        self.links = LinkTable(self.gossip.routes())
        self.conns: dict[int, Conn] = {}  # every live connection, by receiver index
        self.peers: dict[bytes, Conn] = {}  # handshake complete, not closed, by peer name
        self._actions: deque[Action] = deque()
        self.complaints = Complaints(log)
        self.version = version
        self.advertised: tuple[str, ...] = ()  # our listening addresses, host:port
        # Where a NAT forwards our port to us (--nat-public, host:port): peers
        # dial us there, and we offer no candidate to punch to.
        self.public: tuple[str, ...] = ()
        self.relay_role = RELAY_MAY  # --relay: in our record, for everyone's routes

    # -- certificates on a running router -------------------------------------------

    def install_certs(
        self, cert: Certificate, seed: bytes, trust: Trust, wall: float, now: float
    ) -> None:
        """A certificate for a router that ran on the password alone (a mesh
        moving to certificates): the next handshakes offer it, and each
        connection to a peer that has one too is replaced by one made by
        certificate, make before break.  Raises ValueError for another name."""
        if self.certs is not None:
            self.certs.renew(cert, seed, trust)
            return
        certs = Certs(self, cert, seed, trust)
        certs.check_name(cert)
        certs.wall_offset = wall - now
        self.certs = certs
        self._set_auth(self.identity.auth | AUTH_CERT)
        log.info("certificate %s installed: connections move to it", cert.describe())

    def _set_auth(self, auth: int) -> None:
        self.identity = dataclasses.replace(self.identity, auth=auth)
        for conn in list(self.peers.values()):
            self.send_message(conn, MessageType.AUTH, bytes([auth]))

    def _on_auth(self, conn: Conn, payload: bytes, now: float) -> None:
        if len(payload) != 1 or not payload[0] & (AUTH_PASSWORD | AUTH_CERT):
            self.counters["control_messages_bad"] += 1
            return
        conn.peer_auth = payload[0]

    def _on_revoke(self, conn: Conn, payload: bytes, now: float) -> None:
        if self.certs is None:
            self.counters["revocations_ignored"] += 1  # no CA here to check it by
            return
        self.certs.on_message(conn, payload, now)

    def retire_password(self, now: float, sender: Conn | None = None) -> int:
        """The end of a move to certificates (``mesh password retire``, or a
        neighbour's word): the password is refused from now on, connections
        made by it are closed, and every neighbour is told.  Returns how many
        connections were closed.  Raises ValueError without a certificate."""
        if self.certs is None:
            raise ValueError(
                "this router has no certificate: give it one first ('mesh cert renew "
                "--cert F --key F --ca F'), or it would be refused by everyone"
            )
        if not self.password:
            return 0
        self.password = False
        self._set_auth(AUTH_CERT)
        self.act(PasswordRetired())
        log.warning(
            "the mesh password is retired%s: only certificates are accepted from now on",
            f" (by {sender.label})" if sender is not None else "",
        )
        closed = 0
        for conn in list(self.conns.values()):
            res = conn.result
            if res is not None and res.cert is None:
                closed += 1
                self.close_connection(conn, RETIRED, now)
        for conn in list(self.peers.values()):
            if conn is not sender:
                self.send_message(conn, MessageType.RETIRE_PASSWORD, b"")
        return closed

    def _on_retire_password(self, conn: Conn, payload: bytes, now: float) -> None:
        res = conn.result
        if self.certs is None or res is None or res.cert is None:
            # Only a certificate host may end the password's use, and only for
            # a host that has a certificate to go on with.
            self.counters["password_retire_ignored"] += 1
            return
        self.retire_password(now, conn)

    def advertise(self, addresses: Sequence[str]) -> None:
        """Tell every peer where we listen (``host:port`` each; the shell
        finds them on the host); gossiped when they change."""
        new = tuple(sorted(set(addresses)))[:16]
        if new != self.advertised:
            self.advertised = new
            self.announce.own_record_changed()

    # -- output -----------------------------------------------------------------

    def act(self, action: Action) -> None:
        self._actions.append(action)

    def take_actions(self) -> list[Action]:
        out = list(self._actions)
        self._actions.clear()
        return out

    def data_to_send(self, index: int) -> bytes:
        conn = self.conns.get(index)
        return conn.control.data_to_send() if conn is not None else b""

    def get_timer(self, index: int) -> float:
        return self.conns[index].control.get_timer()

    def is_open(self, index: int) -> bool:
        conn = self.conns.get(index)
        return conn is not None and conn.control.state is not State.CLOSED

    def neighbours(self) -> list[bytes]:
        return list(self.peers)

    # -- connections ------------------------------------------------------------

    def open_connection(
        self,
        *,
        initiator: bool,
        remote: tuple[str, int],
        now: float,
        ephemeral: bytes,
        target: str | None = None,
    ) -> int | None:
        """A TCP connection is up.  Returns its index, or None when an inbound
        one is refused (at ``conn_limit``; the shell just closes it)."""
        if not initiator and len(self.conns) >= self.conn_limit:
            self.counters["connections_refused_limit"] += 1
            where = format_address(*remote)
            self.complaints.say(
                logging.WARNING,
                where,
                "limit",
                "connection from %s refused: at the connection limit (%d, --conn-limit)",
                where,
                self.conn_limit,
                now=now,
            )
            return None
        index = self._new_index()
        control = ControlConnection(
            initiator=initiator,
            identity=self.identity,
            psk=self.keys if self.password else NO_PASSWORD,
            ephemeral_private=ephemeral,
            recv_index=index,
            now=now,
            credentials=self.certs.credentials(now) if self.certs is not None else None,
        )
        self.conns[index] = Conn(index, control, remote, initiator, target)
        return index

    def _new_index(self) -> int:
        while True:
            index = self.rng.getrandbits(32)
            if index and index not in self.conns:
                return index

    def receive_data(self, index: int, data: bytes, now: float) -> None:
        conn = self.conns[index]
        conn.control.receive_data(data, now)
        self._process(conn, now)

    def receive_eof(self, index: int, now: float, detail: str = "") -> None:
        conn = self.conns[index]
        if conn.control.state is not State.CLOSED:
            conn.control.receive_eof(now)
            self._process(conn, now, detail)

    def handle_timer(self, index: int, now: float) -> None:
        conn = self.conns[index]
        conn.control.handle_timer(now)
        self._process(conn, now)

    def connection_lost(self, index: int, now: float) -> None:
        """The connection's task has ended: forget it; its target (if it still
        holds one) is retried with backoff."""
        conn = self.conns.pop(index, None)
        if conn is None:
            return
        if conn.state is not ConnState.CLOSED:
            self._closed(conn)
        survivor = self.peers.get(conn.name) if conn.name else None
        if survivor is not None:
            # The peer is still connected another way (the far end closed this
            # one as a duplicate first): that connection serves the target now.
            self._hand_target(conn, survivor)
        if conn.target is not None:
            self.maker.failed(conn.target, conn.control.close_reason or "connection closed", now)
        self.announce.flush(now)

    def close_all(self, reason: str, now: float) -> None:
        for conn in list(self.conns.values()):
            self.close_connection(conn, reason, now)

    def close_connection(self, conn: Conn, reason: str, now: float, cause: str = "local") -> None:
        """Close ``conn`` with ``reason`` (told to the peer), log it, and have
        the shell end its task."""
        if conn.control.state is State.CLOSED:
            return
        conn.control.close(reason)
        self._log_closed(conn, reason, cause, now)
        self._process(conn, now)
        self._actions.append(Close(conn.index))

    def _transition(self, conn: Conn, event: Input) -> None:
        new = TRANSITIONS[conn.state].get(event)
        if new is None:
            raise LocalProtocolError(f"connection {conn.label}: {event.value} in {conn.state}")
        conn.state = new

    def process(self, conn: Conn, now: float, detail: str = "") -> None:
        """Act on what ``conn``'s control connection says happened (for a
        connection whose bytes the core carries itself: ``tunnel``)."""
        self._process(conn, now, detail)

    def _process(self, conn: Conn, now: float, detail: str = "") -> None:
        """Act on what the control connection says happened."""
        while (ev := conn.control.next_event()) is not None:
            if isinstance(ev, HandshakeComplete):
                self._on_handshake(conn, ev.result, now)
            elif isinstance(ev, ConnectionClosed):
                if ev.cause != "local":
                    reason = f"{ev.reason} ({detail})" if detail else ev.reason
                    self._log_closed(conn, reason, ev.cause, now)
                self._closed(conn)
            elif isinstance(ev, MessageReceived):
                self._on_message(conn, ev, now)
        self.announce.flush(now)

    def _closed(self, conn: Conn) -> None:
        """The connection is closed: it is no peer any more, its link is withdrawn."""
        if conn.state is ConnState.CLOSED:
            return
        self._transition(conn, Input.CLOSE)
        if conn.link is not None:
            self.links.withdraw(conn.link)
        if self.peers.get(conn.name) is conn:
            del self.peers[conn.name]
            self.announce.neighbour_down(conn.name)
            self.announce.own_record_changed()
            for ch in self.channels:
                ch.peer_down(conn.name)
            self.hub.flush()

    def _log_closed(self, conn: Conn, reason: str, cause: str, now: float) -> None:
        if conn.result is None:
            # Before the handshake anyone can cause this line (connect, close,
            # again): at most one a minute per address and reason.
            self.counters["handshake_failures" if cause == "error" else "connections_closed"] += 1
            if REVOKED in reason:
                self.counters["handshakes_refused_revoked"] += 1
            self.complaints.say(
                logging.WARNING if cause == "error" else logging.INFO,
                conn.where,
                reason,
                "connection %s at %s %s: %s",
                conn.label,
                conn.where,
                "refused" if cause == "error" else "closed before the handshake",
                reason,
                now=now,
            )
        else:
            self.counters["connections_closed"] += 1
            log.info("connection %s at %s closed: %s", conn.label, conn.where, reason)

    # -- the handshake and its tie-breaks ------------------------------------------

    def _on_handshake(self, conn: Conn, res: HandshakeResult, now: float) -> None:
        if res.peer.name == self.me:  # a target that is this router (a name of this host)
            self.counters["connections_to_self"] += 1
            if conn.target is not None and self.targets.remove(conn.target) is not None:
                log.warning("target %s is this router itself: forgotten", conn.target)
                self._actions.append(TargetsChanged())
                conn.target = None
            self.close_connection(conn, "connection to self", now)
            return
        conn.name = res.peer.name
        self.counters["handshakes"] += 1
        # A certificate outranks every password epoch: rotations leave it be, and
        # it wins the tie-break against a password connection it replaces.
        conn.key_epoch = self.keys.epoch_of(res.psk) if res.cert is None else CERT_EPOCH
        old = self.peers.get(conn.name)
        replaced: Conn | None = None  # a connection this one re-keys
        if old is not None:
            if old.result is not None and old.result.peer.uid != res.peer.uid:
                self.close_connection(old, "peer restarted; replaced by new connection", now)
            else:
                loser = self._duplicate_loser(old, conn)
                self._hand_target(loser, old if loser is conn else conn)
                rekeyed = loser is old and old.key_epoch < conn.key_epoch
                if rekeyed and old.state is ConnState.ESTABLISHED:
                    replaced = old
                if rekeyed and not conn.initiator:
                    # The dialler closes the old one once its own handshake is
                    # done: closed here first, the close could reach it before
                    # our CONFIRM, a gap in its data path.  Until then what
                    # arrives on the old link is still taken.
                    old.superseded_at = now
                elif rekeyed:
                    self.close_connection(loser, _replaced_by(conn), now)
                else:
                    self.counters["duplicates_closed"] += 1
                    self.close_connection(loser, "duplicate connection", now)
                if loser is conn:
                    return
        self._became_peer(conn, res, replaced, now)

    def _became_peer(
        self, conn: Conn, res: HandshakeResult, replaced: Conn | None, now: float
    ) -> None:
        """``conn`` is the peer's connection now: its data path is published,
        and the peer is sent what a new neighbour gets."""
        self._transition(conn, Input.HANDSHAKE_DONE)
        self.peers[conn.name] = conn
        keys = res.keys
        conn.link = _new_link(conn, res)
        if replaced is not None and replaced.link is not None:
            # Same peer, same path, a moment ago: no gap while UDP proves itself.
            conn.link.session.inherit_liveness(replaced.link.session)
            if conn.link.udp_addr is None:  # where the peer's datagrams come from now
                conn.link.udp_addr = replaced.link.udp_addr
        self.links.publish(conn.link, keep_old=replaced is not None and not conn.initiator)
        conn.listen_addr = format_address(conn.remote[0], res.peer.udp_port)
        conn.connected_at = now
        waiting = self.targets.get(conn.listen_addr)
        if conn.target is None and waiting is not None and waiting.state is TargetState.WAITING:
            conn.target = waiting.address  # the peer came to us first: no need to dial it
        if conn.target is not None:
            self.targets.connected(conn.target, format_name(conn.name))
        log.info(
            "connection %s at %s: handshake complete, %s, encrypted with %s, "
            "protocol v%d, %s; waiting for UDP",
            conn.label,
            conn.where,
            "outbound" if conn.initiator else "inbound",
            SUITES[keys.suite].name,
            keys.version,
            "by the password" if res.cert is None else f"by certificate {res.cert.short}",
        )
        self.rotation.send(conn)
        conn.peer_auth = res.peer.auth
        if self.certs is not None:
            self.certs.peer_up(conn)
            if conn.name in self.maker.evicted and res.cert is not None:
                self.maker.evicted.discard(conn.name)  # a valid certificate for the name
                self._actions.append(Readmitted(conn.name))
        self.announce.neighbour_up(conn)
        self.announce.send_clock(conn, now)
        for ch in self.channels:
            for payload in ch.hello(conn.name, conn.remote[0], now):
                self.send_message(conn, ch.mtype, payload)
        if replaced is not None and conn.link.session.established(now):
            self._transition(conn, Input.UDP_UP)  # it inherited a working path
        self.announce.own_record_changed()
        self._actions.append(LinkUp())  # first UDP heartbeat now, not at the next tick

    def _hand_target(self, loser: Conn, winner: Conn) -> None:
        if loser.target is not None and winner.target is None:
            winner.target, loser.target = loser.target, None
            self.targets.connected(winner.target, format_name(winner.name))
        elif loser.target is not None and loser.target == winner.target:
            loser.target = None  # a replacement dialled for the same target: it serves it

    def _duplicate_loser(self, a: Conn, b: Conn) -> Conn:
        """Of two connections to one peer, the one to close: one under an older
        mesh key (a rotation's replacement wins), then one through a relay,
        else the survivor is the one dialled by the peer with the larger name
        (both ends agree)."""
        if a.key_epoch != b.key_epoch:
            return a if a.key_epoch < b.key_epoch else b
        if (a.via is None) != (b.via is None):  # a connection of its own beats one
            return a if a.via is not None else b  # through a relay (``tunnel``)

        def dialler(c: Conn) -> bytes:
            return self.me if c.initiator else c.name

        return b if dialler(a) > dialler(b) else a

    # -- control messages -----------------------------------------------------------

    def _on_message(self, conn: Conn, ev: MessageReceived, now: float) -> None:
        handler = self._handlers.get(ev.type)
        if handler is None:
            self.counters["control_messages_unknown"] += 1
        else:
            handler(conn, ev.payload, now)

    def send_message(self, conn: Conn, mtype: int, payload: bytes) -> bool:
        if conn.control.state is not State.OPEN:
            return False
        conn.control.send_message(mtype, payload)
        self._actions.append(Flush(conn.index))
        return True

    # -- periodic work --------------------------------------------------------------

    def tick(self, now: float, wall: float | None = None) -> None:
        """Rekeys, UDP liveness, topology GC, the channels, anti-entropy,
        discovery.  ``wall`` (the wall clock, seconds) lets peers compare clocks."""
        self.rotation.tick(now)
        if self.certs is not None:
            self.certs.tick(now)
        for conn in list(self.conns.values()):
            if conn.superseded_at is not None and now - conn.superseded_at > SUPERSEDED_GRACE:
                successor = self.peers.get(conn.name)
                self.close_connection(conn, _replaced_by(successor), now)
        if self._udp_liveness(now):
            self.announce.own_record_changed()
        self.reflection.tick()
        gone = self.gossip.gc(now)
        for name in gone:
            log.info(
                "peer %s forgotten: unreachable for %.0fs", format_name(name), self.gossip.gc_after
            )
            for ch in self.channels:
                ch.peer_gone(name)
        if gone:
            self.announce.topology_changed()
        view = View(reachable=self.gossip.reachable(), neighbours=set(self.peers))
        for ch in self.channels:
            ch.tick(now, view)
        self.hub.flush()
        self.announce.tick(now, wall)
        self.maker.sync_discovered(now)
        self.tunnels.tick(now)
        self.tunnels.flush()

    def _udp_liveness(self, now: float) -> bool:
        """Each peer's connection follows its UDP path (established or pending);
        one whose session's nonces are used up is closed.  Whether any moved."""
        changed = False
        for conn in list(self.peers.values()):
            assert conn.link is not None
            session = conn.link.session
            if session.needs_rekey() or conn.control.needs_rekey():
                # Fresh keys come with a fresh connection; the target (ours
                # or the peer's) reconnects within a second.
                self.counters["rekeys"] += 1
                self.close_connection(conn, "rekeying: the session's nonces are used up", now)
                continue
            est = session.established(now)
            res = conn.control.result
            if res is not None and res.keys.version >= QUIET_HEARTBEATS_VERSION:
                # UDP both ways is the peer's liveness: fewer control heartbeats.
                if est:
                    conn.control.peer_alive(session.heard_at, CONTROL_HEARTBEAT_QUIET, now)
                else:
                    conn.control.peer_not_heard(HEARTBEAT_INTERVAL, now)
            if est == (conn.state is ConnState.ESTABLISHED):
                continue
            changed = True
            if est:
                self._transition(conn, Input.UDP_UP)
                self.counters["connections_established"] += 1
                log.info(
                    "connection %s at %s established: UDP flows both ways", conn.label, conn.where
                )
            else:
                self._transition(conn, Input.UDP_DOWN)
                log.warning(
                    "connection %s: UDP lost (no heartbeat for %.0fs)",
                    conn.label,
                    session.udp_timeout,
                )
        return changed

    # -- for the shell --------------------------------------------------------------

    def flush(self) -> None:
        """Send what the channels want sent (the shell calls this after it
        asked a channel for something outside a mesh event)."""
        self.hub.flush()
        self.tunnels.flush()

    def drop_channel(self, ch: Channel) -> None:
        """Stop carrying ``ch`` (its subsystem could not start): its messages
        are then unknown ones."""
        self.hub.drop(ch)

    def rotate(self, key: bytes, now: float, window: float) -> int:
        """The operator gave a new mesh password (its key): adopt it and pass it
        on.  Returns the new epoch.  Raises ValueError for a key in use."""
        return self.rotation.rotate(key, now, window)

    def status(self, now: float) -> MeshStatus:
        return mesh_status(self, now)

    # -- introspection --------------------------------------------------------------

    def peers_named(self, who: str) -> list[bytes]:
        """The peers of the topology whose name or nickname is ``who``."""
        return [n for n, r in self.gossip.records.items() if who in (format_name(n), r.nickname)]

    def nickname_of(self, name: bytes) -> str:
        rec = self.gossip.records.get(name)
        return rec.nickname if rec is not None else "?"
