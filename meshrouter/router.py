"""The router daemon: a thin trio shell around the sans-IO cores.

Tasks (all in one nursery):

* ``_tap_loop``: drains the TAP fd, learns local MACs, packs frames per
  (next hop, destination peer) and sends them as encrypted UDP datagrams.
* ``_udp_loop``: drains the UDP socket, maps each datagram to its session by
  receiver index, authenticates it, learns remote MACs against the origin
  peer and writes frames to the TAP; relays datagrams meant for other peers
  and passes broadcasts down the origin's broadcast tree.  Bad datagrams are
  dropped and counted by reason.
* ``_maker_loop``: dials connection targets (given by the operator or learnt
  from gossip), retrying with jittered backoff.
* ``_tick_loop``: UDP heartbeats, liveness transitions, discovered targets,
  topology garbage collection, periodic full gossip, MAC expiry.
* one task per TCP control connection (``_run_connection``).
* the local API server (``api.serve``), started by the caller.

Routing follows ``topology.Gossip``: unicast goes to the next hop on a shortest
path over established connections; broadcast and unknown unicast go down the
broadcast tree of their origin, so each peer gets each flooded frame once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from . import __version__
from .constants import CONTAINER_MTU, HEARTBEAT_INTERVAL, PORT
from .control import (
    ConnectionClosed,
    ControlConnection,
    HandshakeComplete,
    MessageReceived,
    MessageType,
    State,
)
from .crypto import SUITES
from .dataplane import MAX_HOPS, ROUTE, DataSession, parse_route_header_untrusted
from .errors import BadPacket
from .forwarder import Forwarder
from .handshake import Identity, format_name
from .ipamservice import IpamError, IpamService
from .mactable import MacTable
from .netdev import Tap
from .targets import Targets, format_address
from .topology import ConnInfo, Gossip
from .udp import UdpSocket

log = logging.getLogger("meshrouter")

CONNECT_TIMEOUT = 5.0
LOG_REPEAT_INTERVAL = 60.0  # the same complaint about the same address: once a minute
FULL_GOSSIP_INTERVAL = 30.0


@dataclass
class RouterConfig:
    name: bytes
    nickname: str
    psk: bytes
    bridge: str = "mesh"
    tap_name: str = "meshtap"
    listen_host: str = "0.0.0.0"
    port: int = PORT
    peers: list[str] = field(default_factory=list)
    ipalloc_range: str = "10.32.0.0/12"
    mtu: int = CONTAINER_MTU
    use_tap: bool = True
    gc_after: float = 60.0
    state_dir: Path | None = None  # where IPAM state is kept (None: in memory only)
    ipalloc_init: int = 0  # initial peer count for the first ring (0: PEERs given + 1)
    offload: bool = True  # TAP TSO/checksum offload and UDP GSO/GRO
    busy_poll: float = 0.0  # seconds the forwarder keeps polling after traffic
    conn_limit: int = 100  # control connections, pending ones included


@dataclass(eq=False)
class Peer:
    """The shell's record of one control connection."""

    conn: ControlConnection
    stream: trio.SocketStream
    remote: tuple[str, int]
    initiator: bool
    recv_index: int
    target: str | None = None
    name: bytes = b""
    session: DataSession | None = None
    udp_addr: tuple[str, int] | None = None
    listen_addr: str = ""  # where the peer accepts connections, host:port
    established: bool = False
    connected_at: float = 0.0
    next_probe: float = 0.0
    next_heartbeat: float = 0.0
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    send_lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def label(self) -> str:
        res = self.conn.result
        if res is None:
            return "peer"
        return f"{format_name(self.name)}({res.peer.nickname})"


class Router:
    def __init__(self, config: RouterConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.SystemRandom()
        self.uid = self._rng.getrandbits(64)
        self.me = config.name
        self.name = format_name(config.name)
        self.identity = Identity(
            name=config.name,
            nickname=config.nickname,
            uid=self.uid,
            udp_port=config.port,
            ipalloc_range=config.ipalloc_range,
        )
        self.gossip = Gossip(config.name, self.uid, config.nickname, gc_after=config.gc_after)
        self.peers: dict[bytes, Peer] = {}  # by peer name, handshake complete
        self._by_index: dict[int, Peer] = {}
        self._pending: set[Peer] = set()
        self.targets = Targets(config.port)
        for p in config.peers:
            self.targets.add(p, 0.0)
        self.macs = MacTable()
        self.drops: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.started_at = 0.0
        self._wake_maker = trio.Event()
        self.stop_requested = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._udp: UdpSocket | None = None
        self._tap: Tap | None = None
        self.forwarder: Forwarder | None = None
        self.routes = self.gossip.routes()
        self._next_full_gossip = 0.0
        self._log_seen: dict[tuple[str, str], list[float]] = {}
        self.ipam = IpamService(
            config.name,
            config.ipalloc_range,
            config.ipalloc_init or len(config.peers) + 1,
            config.state_dir,
        )
        self.ipam.send = self._send_ipam
        self.ipam.broadcast = self._broadcast_ipam
        self.ipam.neighbours = lambda: list(self.peers)

    # -- lifecycle ------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        self.started_at = trio.current_time()
        self._next_full_gossip = self.started_at + FULL_GOSSIP_INTERVAL
        udp = UdpSocket(cfg.listen_host, cfg.port, gso=cfg.offload, gro=cfg.offload)
        self._udp = udp
        if cfg.use_tap:
            self._tap = Tap(cfg.tap_name, cfg.bridge, cfg.mtu, offload=cfg.offload)
        clock = trio.lowlevel.current_clock()
        self.forwarder = Forwarder(
            me=self.me,
            tap_fd=self._tap.fd if self._tap is not None else -1,
            udp=udp,
            peers=self.peers,
            by_index=self._by_index,
            topology=self,
            macs=self.macs,
            now=clock.current_time,
            busy_poll=cfg.busy_poll,
        )
        try:
            listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.listen_host)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(trio.serve_listeners, self._handle_inbound, listeners)
                await nursery.start(self._forwarder_task)
                nursery.start_soon(self._maker_loop)
                nursery.start_soon(self._tick_loop)
                log.info(
                    "router %s (%s) listening on %s, TCP and UDP port %d, bridge %s",
                    self.name,
                    cfg.nickname,
                    cfg.listen_host,
                    cfg.port,
                    cfg.bridge,
                )
                task_status.started()
        finally:
            self.ipam.close()
            self.forwarder.close()
            udp.close()
            if self._tap is not None:
                self._tap.close()

    async def shutdown(self, reason: str = "router shutting down") -> None:
        for peer in list(self.peers.values()) + list(self._pending):
            await self._close_peer(peer, reason)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- operator actions -----------------------------------------------

    def connect(self, address: str) -> str:
        t = self.targets.add(address, trio.current_time())
        self._wake_maker.set()
        log.info("target %s added", t.address)
        return t.address

    async def forget(self, address: str) -> str | None:
        t = self.targets.remove(address)
        if t is None or t.discovered:
            return None
        log.info("target %s forgotten", t.address)
        for peer in list(self.peers.values()) + list(self._pending):
            if peer.target == t.address:
                await self._close_peer(peer, "peer forgotten by operator")
        return t.address

    # -- control connections --------------------------------------------

    def _connection_count(self) -> int:
        return len(self.peers) + len(self._pending)

    async def _handle_inbound(self, stream: trio.SocketStream) -> None:
        if self._connection_count() >= self.config.conn_limit:
            self.counters["connections_refused_limit"] += 1
            try:
                where = format_address(*stream.socket.getpeername()[:2])
            except OSError:
                where = "?"
            self._log_limited(
                logging.WARNING,
                where,
                "limit",
                "connection from %s refused: at the connection limit (%d, --conn-limit)",
                where,
                self.config.conn_limit,
            )
            await stream.aclose()
            return
        await self._run_connection(stream, initiator=False, target=None)

    def _log_limited(self, level: int, where: str, kind: str, msg: str, *args: object) -> None:
        """Log, but the same kind of complaint about the same address at most
        once per LOG_REPEAT_INTERVAL; says how many were held back."""
        now = trio.current_time()
        key = (where.rsplit(":", 1)[0], kind)
        seen = self._log_seen.get(key)
        if seen is not None and now - seen[0] < LOG_REPEAT_INTERVAL:
            seen[1] += 1
            return
        held = int(seen[1]) if seen else 0
        if held:
            msg += f" ({held} more like it in the last {LOG_REPEAT_INTERVAL:.0f}s not logged)"
        self._log_seen[key] = [now, 0]
        if len(self._log_seen) > 1000:  # bounded: forget the oldest
            del self._log_seen[next(iter(self._log_seen))]
        log.log(level, msg, *args)

    async def _run_connection(
        self, stream: trio.SocketStream, *, initiator: bool, target: str | None
    ) -> None:
        """Run one control connection; a bug in it must not take the router down."""
        try:
            await self._connection(stream, initiator=initiator, target=target)
        except Exception:
            self.counters["connection_crashes"] += 1
            log.exception("connection task failed; connection dropped")

    async def _maker_loop(self) -> None:
        while True:
            now = trio.current_time()
            for t in self.targets.due(now):
                if self._connection_count() >= self.config.conn_limit:
                    self._target_failed(t.address, "at the connection limit (--conn-limit)")
                    continue
                self._spawn(self._dial, t.address)
            self._wake_maker = trio.Event()
            with trio.move_on_at(self.targets.next_deadline()):
                await self._wake_maker.wait()

    def _spawn(self, fn: Any, *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    async def _dial(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        host = host.strip("[]")
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(host, int(port))
        except (OSError, trio.TooSlowError) as exc:
            reason = "connection timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
            self._target_failed(address, reason)
            return
        await self._run_connection(stream, initiator=True, target=address)

    def _target_failed(self, address: str, reason: str) -> None:
        now = trio.current_time()
        self.targets.failed(address, reason, now, jitter=self._rng.uniform(0.5, 1.5))
        t = self.targets.get(address)
        if t is not None:
            log.info(
                "connection to %s failed: %s; retrying in %.1fs", address, reason, t.next_try - now
            )
        self._wake_maker.set()

    def _new_index(self) -> int:
        while True:
            idx = self._rng.getrandbits(32)
            if idx and idx not in self._by_index:
                return idx

    async def _connection(
        self, stream: trio.SocketStream, *, initiator: bool, target: str | None
    ) -> None:
        sockname = stream.socket.getpeername()
        remote = (str(sockname[0]), int(sockname[1]))
        idx = self._new_index()
        conn = ControlConnection(
            initiator=initiator,
            identity=self.identity,
            psk=self.config.psk,
            ephemeral_private=os.urandom(32),
            recv_index=idx,
            now=trio.current_time(),
        )
        peer = Peer(conn, stream, remote, initiator, idx, target)
        self._pending.add(peer)
        self._by_index[idx] = peer  # reserved; datagrams before the handshake ends are dropped
        try:
            with peer.cancel:
                await self._flush(peer)
                while conn.state is not State.CLOSED:
                    with trio.move_on_at(conn.get_timer()) as cs:
                        data = await stream.receive_some(65536)
                    now = trio.current_time()
                    if cs.cancelled_caught:
                        conn.handle_timer(now)
                    elif not data:
                        conn.receive_eof(now)
                    else:
                        conn.receive_data(data, now)
                    await self._process_events(peer)
                    await self._flush(peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if conn.state is not State.CLOSED:
                conn.receive_eof(trio.current_time())
                await self._process_events(peer, detail=str(exc) or type(exc).__name__)
        finally:
            self._pending.discard(peer)
            self._detach(peer)
            with trio.CancelScope(shield=True):
                await stream.aclose()
            if peer.target is not None:  # a duplicate that lost handed its target over
                self._target_failed(peer.target, conn.close_reason or "connection closed")

    async def _flush(self, peer: Peer) -> None:
        data = peer.conn.data_to_send()
        if data:
            async with peer.send_lock:
                await peer.stream.send_all(data)

    async def _flush_quietly(self, peer: Peer) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await self._flush(peer)

    async def _close_peer(self, peer: Peer, reason: str) -> None:
        peer.conn.close(reason)
        with trio.move_on_after(1):
            await self._flush_quietly(peer)
        self._log_closed(peer, reason, "local")
        peer.cancel.cancel()

    async def _process_events(self, peer: Peer, detail: str = "") -> None:
        while (ev := peer.conn.next_event()) is not None:
            if isinstance(ev, HandshakeComplete):
                await self._on_handshake(peer, ev)
            elif isinstance(ev, ConnectionClosed):
                if ev.cause != "local":
                    reason = f"{ev.reason} ({detail})" if detail else ev.reason
                    self._log_closed(peer, reason, ev.cause)
            elif isinstance(ev, MessageReceived):
                self._on_message(peer, ev)

    def _on_message(self, peer: Peer, ev: MessageReceived) -> None:
        if ev.type == MessageType.IPAM:
            try:
                self.ipam.on_message(peer.name, ev.payload)
            except BadPacket as exc:
                self.counters["ipam_errors"] += 1
                peer.conn.close(f"bad IPAM message: {exc}")
                self._log_closed(peer, f"bad IPAM message: {exc}", "error")
            return
        if ev.type == MessageType.IPAM_RELAYED:
            self._on_relayed_ipam(ev.payload)
            return
        if ev.type != MessageType.GOSSIP:
            self.counters["control_messages_unknown"] += 1
            return
        try:
            fwd = self.gossip.receive_untrusted(ev.payload)
        except BadPacket as exc:
            self.counters["gossip_errors"] += 1
            peer.conn.close(f"bad gossip: {exc}")
            self._log_closed(peer, f"bad gossip: {exc}", "error")
            return
        if fwd is not None:
            self._topology_changed()
            self._gossip_to_all(fwd, but=peer)

    def _log_closed(self, peer: Peer, reason: str, cause: str) -> None:
        where = format_address(*peer.remote)
        if peer.conn.result is None and cause == "error":
            self.counters["handshake_failures"] += 1
            self._log_limited(
                logging.WARNING,
                where,
                reason,
                "connection %s at %s refused: %s",
                peer.label,
                where,
                reason,
            )
        else:
            self.counters["connections_closed"] += 1
            log.info("connection %s at %s closed: %s", peer.label, where, reason)

    async def _on_handshake(self, peer: Peer, ev: HandshakeComplete) -> None:
        res = ev.result
        peer.name = res.peer.name
        old = self.peers.get(peer.name)
        if old is not None:
            if old.conn.result is not None and old.conn.result.peer.uid != res.peer.uid:
                await self._close_peer(old, "peer restarted; replaced by new connection")
            else:
                # Two connections between the same pair (both dialled): keep
                # the one dialled by the peer with the larger name; both ends
                # compute the same answer.
                def dialler(p: Peer) -> bytes:
                    return self.me if p.initiator else p.name

                loser = peer if dialler(old) > dialler(peer) else old
                winner = old if loser is peer else peer
                self._adopt_target(loser, winner)
                await self._close_peer(loser, "duplicate connection")
                if loser is peer:
                    return
        self._pending.discard(peer)
        self.peers[peer.name] = peer
        keys = res.keys
        peer.session = DataSession(
            suite=keys.suite,
            send_key=keys.data_send,
            recv_key=keys.data_recv,
            local_index=peer.recv_index,
            peer_index=res.peer_recv_index,
        )
        peer.udp_addr = (peer.remote[0], res.peer.udp_port)
        peer.listen_addr = format_address(peer.remote[0], res.peer.udp_port)
        peer.connected_at = trio.current_time()
        if peer.target is not None:
            self.targets.connected(peer.target, format_name(peer.name))
        log.info(
            "connection %s at %s: handshake complete, %s, encrypted with %s, "
            "protocol v%d; waiting for UDP",
            peer.label,
            format_address(*peer.remote),
            "outbound" if peer.initiator else "inbound",
            SUITES[keys.suite].name,
            keys.version,
        )
        self._send_gossip(peer, self.gossip.full())
        ring = self.ipam.ring_payload()
        if ring is not None:
            self._send_control(peer, MessageType.IPAM, ring)
        self._update_own_record()
        if self.forwarder is not None:
            self.forwarder.kick()  # first UDP heartbeat now, not at the next tick

    def _adopt_target(self, loser: Peer, winner: Peer) -> None:
        if loser.target is not None and winner.target is None:
            winner.target, loser.target = loser.target, None
            self.targets.connected(winner.target, format_name(winner.name))

    def _detach(self, peer: Peer) -> None:
        if self.peers.get(peer.name) is peer:
            del self.peers[peer.name]
            self._update_own_record()
        if self._by_index.get(peer.recv_index) is peer:
            del self._by_index[peer.recv_index]

    # -- gossip ---------------------------------------------------------

    def _update_own_record(self) -> None:
        conns = [
            ConnInfo(p.name, p.listen_addr, p.established, p.initiator) for p in self.peers.values()
        ]
        update = self.gossip.set_connections(conns)
        if update is not None:
            self._topology_changed()
            self._gossip_to_all(update)

    def _gossip_to_all(self, payload: bytes, but: Peer | None = None) -> None:
        for p in list(self.peers.values()):
            if p is not but:
                self._send_gossip(p, payload)

    def _send_gossip(self, peer: Peer, payload: bytes) -> None:
        if self._send_control(peer, MessageType.GOSSIP, payload):
            self.counters["gossip_bytes_sent"] += len(payload)

    def _send_control(self, peer: Peer, mtype: MessageType, payload: bytes) -> bool:
        if peer.conn.state is not State.OPEN:
            return False
        peer.conn.send_message(mtype, payload)
        self._spawn(self._flush_quietly, peer)
        return True

    def _send_ipam(self, name: bytes, payload: bytes) -> bool:
        """Send an IPAM message to peer ``name``: directly, or relayed through
        the mesh (like a data frame) when there is no connection to it."""
        peer = self.peers.get(name)
        if peer is not None and self._send_control(peer, MessageType.IPAM, payload):
            return True
        return self._relay_ipam(ROUTE.pack(self.me, name, MAX_HOPS) + payload)

    def _relay_ipam(self, message: bytes) -> bool:
        """Pass a relayed IPAM message (route header first) one hop on."""
        _origin, dst, _hops = ROUTE.unpack_from(message)
        hop = self.routes.next_hop.get(dst)
        peer = self.peers.get(hop) if hop is not None else None
        return peer is not None and self._send_control(peer, MessageType.IPAM_RELAYED, message)

    def _on_relayed_ipam(self, payload: bytes) -> None:
        try:
            origin, dst, hops = parse_route_header_untrusted(payload)
        except BadPacket:
            self.counters["ipam_errors"] += 1
            return
        if dst != self.me:
            if (
                hops == 0
                or origin == self.me
                or not self._relay_ipam(
                    payload[: ROUTE.size - 1] + bytes([hops - 1]) + payload[ROUTE.size :]
                )
            ):
                self.counters["ipam_relay_dropped"] += 1
            else:
                self.counters["ipam_relayed"] += 1
            return
        try:
            self.ipam.on_message(origin, payload[ROUTE.size :])
        except BadPacket as exc:
            # The relaying peer is not to blame: count it, keep the connection.
            self.counters["ipam_errors"] += 1
            origin_name = format_name(origin)
            self._log_limited(
                logging.WARNING,
                origin_name,
                "bad relayed IPAM",
                "bad IPAM message relayed from %s: %s",
                origin_name,
                exc,
            )

    def _broadcast_ipam(self, payload: bytes, but: bytes | None) -> None:
        for name, peer in list(self.peers.items()):
            if name != but:
                self._send_control(peer, MessageType.IPAM, payload)

    # -- IPAM for the API -------------------------------------------------

    def _ident(self, container: str) -> str:
        return f"{self.name}/{container}"

    async def allocate(self, container: str, ns_path: str, subnet: str | None) -> str:
        return await self.ipam.allocate(self._ident(container), ns_path, subnet)

    async def claim(self, cidr: str, container: str, ns_path: str) -> str:
        return await self.ipam.claim(cidr, self._ident(container), ns_path)

    def release(self, container: str) -> list[str]:
        return self.ipam.release(self._ident(container))

    def rmpeer(self, who: str) -> str:
        match = [
            n for n, r in self.gossip.records.items() if who in (format_name(n), r.nickname)
        ] or [t.owner for t in self.ipam.core.tokens.values() if format_name(t.owner) == who]
        if not match:
            raise IpamError(
                f"no peer named {who!r} (see 'mesh status peers' or 'mesh status ipam')"
            )
        name = match[0]
        if name == self.me:
            raise IpamError("that is this peer")
        if name in self.peers:
            raise IpamError(f"peer {who} is connected: stop it ('mesh stop') before rmpeer")
        n = self.ipam.rmpeer(name)
        log.info("rmpeer %s: took over %d range(s) of its address share", who, n)
        return f"{n} range(s) of {format_name(name)} reclaimed"

    # -- periodic work --------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            now = trio.current_time()
            changed = False
            for peer in list(self.peers.values()):
                assert peer.session is not None
                if peer.session.needs_rekey() or peer.conn.needs_rekey():
                    # Fresh keys come with a fresh connection; the target (ours
                    # or the peer's) reconnects within a second.
                    self.counters["rekeys"] += 1
                    self._spawn(
                        self._close_peer, peer, "rekeying: the session's nonces are used up"
                    )
                    continue
                est = peer.session.established(now)
                if est != peer.established:
                    peer.established = est
                    changed = True
                    if est:
                        self.counters["connections_established"] += 1
                        log.info(
                            "connection %s at %s established: UDP flows both ways",
                            peer.label,
                            format_address(*peer.remote),
                        )
                    else:
                        log.warning(
                            "connection %s: UDP lost (no heartbeat for %.0fs)",
                            peer.label,
                            peer.session.udp_timeout,
                        )
            if changed:
                self._update_own_record()
            gone = self.gossip.gc(now)
            for name in gone:
                log.info(
                    "peer %s forgotten: unreachable for %.0fs",
                    format_name(name),
                    self.gossip.gc_after,
                )
            if gone:
                self._topology_changed()
            self.ipam.tick(now, self.gossip.reachable())
            if now >= self._next_full_gossip:
                self._next_full_gossip = now + FULL_GOSSIP_INTERVAL
                self._gossip_to_all(self.gossip.full())
                ring = self.ipam.ring_payload()
                if ring is not None:
                    self._broadcast_ipam(ring, None)
            self._sync_discovered(now)
            await trio.sleep(HEARTBEAT_INTERVAL / 2)

    def _sync_discovered(self, now: float) -> None:
        """Dial every peer the topology knows that we have no connection to."""
        operator = {t.address for t in self.targets if not t.discovered}
        wanted: set[str] = set()
        for name in self.gossip.records:
            if name != self.me and name not in self.peers:
                wanted |= self.gossip.addresses_of(name) - operator
        before = len(self.targets)
        self.targets.sync_discovered(wanted, now)
        if len(self.targets) != before:
            self._wake_maker.set()

    # -- data plane -----------------------------------------------------

    async def _forwarder_task(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the forwarder thread for as long as this task lives."""
        fwd = self.forwarder
        assert fwd is not None

        async def stop_on_cancel() -> None:
            try:
                await trio.sleep_forever()
            finally:
                fwd.stop()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_cancel)
            task_status.started()
            # Not cancellable by design: it returns once stop_on_cancel says stop.
            await trio.to_thread.run_sync(fwd.run)
            nursery.cancel_scope.cancel()

    def _topology_changed(self) -> None:
        """Publish fresh routes for the forwarder (it only ever reads ``self.routes``)."""
        self.routes = self.gossip.routes()

    # -- introspection --------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        conns = []
        for peer in list(self.peers.values()):
            res, s = peer.conn.result, peer.session
            assert res is not None
            assert s is not None
            conns.append(
                {
                    "peer": format_name(peer.name),
                    "nickname": res.peer.nickname,
                    "address": format_address(*peer.remote),
                    "udp_address": format_address(*peer.udp_addr) if peer.udp_addr else None,
                    "direction": "outbound" if peer.initiator else "inbound",
                    "state": "established" if s.established(now) else "pending (no UDP both ways)",
                    "encrypted": True,
                    "cipher": SUITES[res.keys.suite].name,
                    "protocol_version": res.keys.version,
                    "uptime": round(now - peer.connected_at, 1),
                    "datagram_size": s.datagram_size,
                    "pmtu_confirmed": s.pmtu_confirmed,
                    "tx_messages": s.tx_messages,
                    "rx_messages": s.rx_messages,
                    "reassembly_drops": s.reassembly_drops,
                    "tx_packets": s.tx_packets,
                    "rx_packets": s.rx_packets,
                    "tx_frames": s.tx_frames,
                    "rx_frames": s.rx_frames,
                    "tx_bytes": s.tx_bytes,
                    "rx_bytes": s.rx_bytes,
                }
            )
        for peer in list(self._pending):
            conns.append(
                {
                    "peer": None,
                    "address": format_address(*peer.remote),
                    "direction": "outbound" if peer.initiator else "inbound",
                    "state": "handshake",
                    "encrypted": False,
                }
            )
        targets = []
        for t in self.targets:
            targets.append(
                {
                    "address": t.address,
                    "state": t.state,
                    "discovered": t.discovered,
                    "peer": t.peer,
                    "attempts": t.attempts,
                    "last_error": t.last_error,
                    "next_try_in": round(max(0.0, t.next_try - now), 1)
                    if t.state == "waiting"
                    else None,
                }
            )
        routes = self.routes
        peers = []
        for name, rec in sorted(self.gossip.records.items()):
            hop = routes.next_hop.get(name)
            peers.append(
                {
                    "peer": format_name(name),
                    "nickname": rec.nickname,
                    "uid": rec.uid,
                    "version": rec.version,
                    "reachable": name == self.me or hop is not None,
                    "via": None if hop is None or hop == name else format_name(hop),
                    "connections": [
                        {
                            "peer": format_name(c.peer),
                            "address": c.address,
                            "established": c.established,
                            "outbound": c.outbound,
                        }
                        for c in rec.connections
                    ],
                }
            )
        return {
            "version": __version__,
            "tasks": _count_tasks(),
            "threads": threading.active_count(),
            "name": self.name,
            "nickname": self.config.nickname,
            "uid": self.uid,
            "port": self.config.port,
            "bridge": self.config.bridge,
            "tap": self._tap.name if self._tap else None,
            "ipalloc_range": self.config.ipalloc_range,
            "mtu": self.config.mtu,
            "encryption": True,
            "uptime": round(now - self.started_at, 1),
            "connections": conns,
            "targets": targets,
            "peers": peers,
            "macs": len(self.macs),
            "drops": dict(
                self.drops
                + (self.forwarder.drops if self.forwarder else Counter())
                + (self._udp.errors if self._udp else Counter())
            ),
            "offload": {
                "tap": bool(self._tap and self._tap.offload),
                "udp_gso": bool(self._udp and self._udp.gso),
                "udp_gro": bool(self._udp and self._udp.gro),
                "gso_sends": self._udp.gso_sends if self._udp else 0,
            },
            "counters": dict(
                self.counters + (self.forwarder.counters if self.forwarder else Counter())
            ),
            "ipam": self.ipam.status(
                lambda n: r.nickname if (r := self.gossip.records.get(n)) else "?"
            ),
            "gossip": {
                "bytes_sent": self.gossip.bytes_sent,
                "bytes_received": self.gossip.bytes_received,
            },
        }


def _count_tasks() -> int:
    """Live trio tasks (the soak test watches this for leaks)."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    return walk(root) if root is not None else 0
