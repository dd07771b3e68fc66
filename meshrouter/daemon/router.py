"""The router daemon's trio shell: sockets, the TAP, timers and tasks around the cores.

Every decision is made by ``mesh.Mesh`` (peers, tie-breaks, targets, gossip,
relaying IPAM) or ``ipamservice.IpamService`` (addresses); the data plane runs
in the forwarder thread (``forwarder``), which shares only what ``link``
types.  This shell moves bytes, time and events between them and the world.

Tasks, all in one nursery:

* the TCP listener, and one task per control connection (``_connection``):
  bytes in, ``Mesh.receive_data``, bytes out;
* ``_maker_loop``: dials what ``Mesh.dials_due`` says, when it says;
* ``_tick_loop``: ``Mesh.tick`` twice a second;
* ``_forwarder_task``: the forwarder thread, stopped when the nursery is.

After every call into the mesh, ``_apply`` carries out its actions.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import trio

from meshrouter import __version__
from meshrouter.base.boundary import Boundary
from meshrouter.base.constants import (
    DNS_PORT,
    FASTPATH_DEVICE,
    HEARTBEAT_INTERVAL,
    protocol_versions,
)
from meshrouter.base.errors import BadInput, IpamError
from meshrouter.base.inputs import format_address, split_address
from meshrouter.base.names import format_name
from meshrouter.contract.config import RouterOptions, parse_subnets
from meshrouter.contract.state import atomic_write, load_json
from meshrouter.contract.status import DnsStatus, ExposeStatus, PingResult, RouterStatus
from meshrouter.dataplane.forwarder import Forwarder
from meshrouter.dataplane.sessionstate import Mode, native_available, use_native
from meshrouter.dataplane.tap import Tap
from meshrouter.dataplane.udp import UdpSocket
from meshrouter.dns.answer import Answerer
from meshrouter.dns.records import normalise_name
from meshrouter.dns.service import DnsServer, load_own, parse_upstreams, save_own
from meshrouter.engines import watcher as engine
from meshrouter.fastpath.core import FastPath
from meshrouter.fastpath.service import FastPathService
from meshrouter.host import hostaccess
from meshrouter.host.netdev import NetdevError
from meshrouter.host.preflight import is_local_address
from meshrouter.ipam.service import IpamService
from meshrouter.mesh.core import (
    Close,
    FastPathWork,
    Flush,
    KeysChanged,
    LinkUp,
    Mesh,
    Redial,
    Rng,
    TargetsChanged,
)
from meshrouter.proto.handshake import derive_psk
from meshrouter.proto.keyring import DEFAULT_WINDOW, KeyRing

if TYPE_CHECKING:
    from meshrouter.daemon.api import Asker

log = logging.getLogger("meshrouter")

CONNECT_TIMEOUT = 5.0
CLOSE_FLUSH_TIMEOUT = 1.0
EXPOSE_CONTAINER = "host:expose"  # the IPAM and DNS key of the host's own addresses


class _Wire:
    """The shell's side of one control connection."""

    __slots__ = ("scope", "send_lock", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.scope = trio.CancelScope()
        self.send_lock = trio.Lock()


class Router:
    def __init__(
        self,
        opts: RouterOptions,
        *,
        name: bytes,
        psk: bytes,
        nickname: str,
        state_dir: Path | None = None,
        peers: list[str] | None = None,
        rng: Rng | None = None,
    ) -> None:
        self.opts = opts
        self.stop_requested = trio.Event()
        self.boundary = Boundary(log)  # what one request to a server of ours did wrong
        self._wires: dict[int, _Wire] = {}
        self._wake_maker = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._udp: UdpSocket | None = None
        self._tap: Tap | None = None
        self.forwarder: Forwarder | None = None
        self.started_at = 0.0
        self.started_wall = 0.0
        self.serving = False  # listening, start-up done
        peers = list(opts.peers) if peers is None else peers
        use_native(cast(Mode, opts.dataplane))  # --dataplane c without the C loop: ValueError
        fastpath = None
        if opts.trusted_subnets:
            trusted = parse_subnets(opts.trusted_subnets)  # ValueError names the bad one
            fastpath = FastPath(name, bytes(6), trusted, probe_size=opts.mtu + 14)
        self.fastpath_service: FastPathService | None = None
        self.ipam = IpamService(
            name,
            opts.ipalloc_range,
            opts.ipalloc_init or len(peers) + 1,
            state_dir,
            self,
            reclaim_after=opts.reclaim_after,
        )
        self.mesh = Mesh(
            name=name,
            nickname=nickname,
            psk=psk,
            port=opts.port,
            ipalloc_range=opts.ipalloc_range,
            peers=peers,
            rng=rng or random.SystemRandom(),
            ipam=self.ipam,
            conn_limit=opts.conn_limit,
            version=__version__,
            fastpath=fastpath,
        )
        self.state_dir = state_dir
        self.ipam.on_release = self._released
        self.ipam.on_gone = self._containers_gone
        self._pruning = False
        if state_dir is not None:
            self.mesh.dns.restore_own(load_own(state_dir / "dns.json", name))
        self._dns_saved = self.mesh.dns.own_version
        self.dns_domain = normalise_name(opts.dns_domain)
        self.dns_server: DnsServer | None = None
        if opts.dns:
            answerer = Answerer(
                self.mesh.dns,
                domain=self.dns_domain,
                ttl=opts.dns_ttl,
                mesh_range=opts.ipalloc_range,
                rng=random.Random(),
            )
            self.dns_server = DnsServer(
                answerer,
                address=opts.dns_listen_address,
                port=DNS_PORT,
                device=opts.bridge,
                upstreams=parse_upstreams(opts.dns_upstream, opts.dns_listen_address),
                boundary=self.boundary,
            )
        self.exposed: ExposeStatus = {"addresses": [], "masquerade": False}
        if state_dir is not None:
            saved = load_json(state_dir / "expose.json", None)
            if isinstance(saved, dict) and isinstance(saved.get("addresses"), list):
                self.exposed = {
                    "addresses": [str(a) for a in saved["addresses"]],
                    "masquerade": bool(saved.get("masquerade")),
                }

    # -- lifecycle ------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        opts = self.opts
        self.started_at = trio.current_time()
        self.started_wall = time.time()
        self._load_keys()
        udp = self._udp = UdpSocket(opts.listen, opts.port, gso=opts.offload, gro=opts.offload)
        self._tap = Tap(opts.tap, opts.bridge, opts.mtu, offload=opts.offload)
        self.forwarder = Forwarder(
            me=self.mesh.me,
            tap_fd=self._tap.fd,
            udp=udp,
            links=self.mesh.links,
            now=trio.lowlevel.current_clock().current_time,
            busy_poll=opts.busy_poll_us / 1e6,
            dataplane=cast(Mode, opts.dataplane),
        )
        core = self.mesh.fastpath
        if core is not None:
            forwarder = self.forwarder
            service = FastPathService(
                core, bridge=opts.bridge, tap=self._tap.name, device=FASTPATH_DEVICE,
                macs=lambda: forwarder.mac_view,
            )  # fmt: skip
            try:
                service.up()
            except (NetdevError, OSError) as exc:
                log.error("no kernel fast path (trusted links stay encrypted): %s", exc)
                service.down()
                self.mesh.fastpath = None
            else:
                forwarder.publish_macs = True
                self.fastpath_service = service
        try:
            listeners = await trio.open_tcp_listeners(opts.port, host=opts.listen)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(trio.serve_listeners, self._inbound, listeners)
                await nursery.start(self._forwarder_task)
                nursery.start_soon(self._maker_loop)
                nursery.start_soon(self._tick_loop)
                if self.fastpath_service is not None:
                    await nursery.start(self.fastpath_service.serve)
                if self.dns_server is not None:
                    try:
                        hostaccess.dns_up(opts.bridge, self._tap.name, opts.dns_listen_address)
                    except NetdevError as exc:
                        log.warning("DNS may be answered by other hosts' routers: %s", exc)
                    try:
                        await nursery.start(self.dns_server.serve)
                    except OSError as exc:
                        log.error(
                            "no DNS: cannot listen on %s port %d: %s (--dns-listen-address, "
                            "or --no-dns)",
                            opts.dns_listen_address,
                            DNS_PORT,
                            exc,
                        )
                        self.dns_server = None
                self._apply_expose()
                log.info(
                    "router %s (%s) listening on %s, TCP and UDP port %d, bridge %s",
                    self.mesh.name,
                    self.mesh.nickname,
                    opts.listen,
                    opts.port,
                    opts.bridge,
                )
                self.serving = True
                task_status.started()
        finally:
            if opts.dns:
                hostaccess.dns_down(opts.bridge, opts.dns_listen_address)
            if self.exposed["masquerade"]:
                hostaccess.masquerade_down()
            self.ipam.close()
            if self.fastpath_service is not None:
                self.fastpath_service.down()
            self.forwarder.close()
            udp.close()
            self._tap.close()

    async def shutdown(self, reason: str = "router shutting down") -> None:
        self.mesh.close_all(reason, trio.current_time())
        for action in self.mesh.take_actions():
            if isinstance(action, Close):
                await self._finish_close(action.index)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- the mesh's actions ---------------------------------------------

    def _apply(self) -> None:
        for action in self.mesh.take_actions():
            if isinstance(action, Flush):
                self._spawn(self._flush_quietly, action.index)
            elif isinstance(action, Close):
                self._spawn(self._finish_close, action.index)
            elif isinstance(action, TargetsChanged):
                self._wake_maker.set()
            elif isinstance(action, LinkUp) and self.forwarder is not None:
                self.forwarder.kick()
            elif isinstance(action, KeysChanged):
                self._save_keys()
            elif isinstance(action, FastPathWork) and self.fastpath_service is not None:
                self.fastpath_service.send_probes(action.probes)
                if action.changed:
                    self.fastpath_service.path_changed()
            elif isinstance(action, Redial) and self._nursery is not None:
                self._nursery.start_soon(self._dial, action.address)

    # -- the mesh password ----------------------------------------------

    def _load_keys(self) -> None:
        """The key ring of an earlier run (a rotation survives restarts), with
        the launch password's key taken in; called in trio, before any connection."""
        if self.state_dir is None:
            return
        path = self.state_dir / "keys.json"
        if path.exists():
            doc = load_json(path, None)
            ring = KeyRing.from_json(doc, self.mesh.keys.current, trio.current_time(), time.time())
            self.mesh.keys = ring
            self._save_keys()

    def _save_keys(self) -> None:
        if self.state_dir is not None:
            doc = self.mesh.keys.to_json(trio.current_time(), time.time())
            atomic_write(self.state_dir / "keys.json", json.dumps(doc).encode(), 0o600)

    async def rotate_password(self, password: str, window: float | None) -> str:
        """``mesh password rotate``: the new password's key for the whole mesh."""
        if not password:
            raise IpamError("the new password file is empty")
        key = await trio.to_thread.run_sync(derive_psk, password.encode())
        span = window if window is not None else DEFAULT_WINDOW
        if not 1 <= span <= 30 * 86400:
            raise IpamError("the window must be between 1 second and 30 days")
        try:
            epoch = self.mesh.rotate(key, trio.current_time(), span)
        except ValueError as exc:
            raise IpamError(str(exc)) from None
        self._apply()
        return (
            f"mesh password rotated (epoch {epoch}); the mesh carries it to every peer; "
            f"the old one is accepted for {span:.0f}s more"
        )

    def _spawn(self, fn: Callable[[int], Awaitable[None]], index: int) -> None:
        if self._nursery is not None and index in self._wires:
            self._nursery.start_soon(fn, index)

    async def _flush(self, index: int) -> None:
        wire = self._wires.get(index)
        data = self.mesh.data_to_send(index)
        if data and wire is not None:
            async with wire.send_lock:
                await wire.stream.send_all(data)

    async def _flush_quietly(self, index: int) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await self._flush(index)

    async def _finish_close(self, index: int) -> None:
        """Send what the closed connection still has (its CLOSE), then end its task."""
        with trio.move_on_after(CLOSE_FLUSH_TIMEOUT):
            await self._flush_quietly(index)
        wire = self._wires.get(index)
        if wire is not None:
            wire.scope.cancel()

    # -- IPAM's transport: through the mesh ------------------------------

    def send_ipam(self, name: bytes, payload: bytes) -> bool:
        sent = self.mesh.send_ipam(name, payload)
        self._apply()
        return sent

    def broadcast_ipam(self, payload: bytes, but: bytes | None) -> None:
        self.mesh.broadcast_ipam(payload, but)
        self._apply()

    def neighbours(self) -> list[bytes]:
        return self.mesh.neighbours()

    # -- control connections --------------------------------------------

    async def _inbound(self, stream: trio.SocketStream) -> None:
        await self._run_connection(stream, initiator=False, target=None)

    async def _run_connection(
        self, stream: trio.SocketStream, *, initiator: bool, target: str | None
    ) -> None:
        """Run one control connection; a bug in it must not take the router down."""
        try:
            await self._connection(stream, initiator=initiator, target=target)
        except Exception:
            self.mesh.counters["connection_crashes"] += 1
            log.exception("connection task failed; connection dropped")

    async def _connection(
        self, stream: trio.SocketStream, *, initiator: bool, target: str | None
    ) -> None:
        mesh = self.mesh
        try:
            peer = stream.socket.getpeername()
        except OSError:
            peer = ("?", 0)
        index = mesh.open_connection(
            initiator=initiator,
            remote=(str(peer[0]), int(peer[1])),
            now=trio.current_time(),
            ephemeral=os.urandom(32),
            target=target,
        )
        if index is None:  # refused: at the connection limit
            await stream.aclose()
            return
        wire = self._wires[index] = _Wire(stream)
        try:
            with wire.scope:
                await self._flush(index)
                while mesh.is_open(index):
                    with trio.move_on_at(mesh.get_timer(index)) as cs:
                        data = await stream.receive_some(65536)
                    now = trio.current_time()
                    if cs.cancelled_caught:
                        mesh.handle_timer(index, now)
                    elif not data:
                        mesh.receive_eof(index, now)
                    else:
                        mesh.receive_data(index, data, now)
                    self._apply()
                    await self._flush(index)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            mesh.receive_eof(index, trio.current_time(), str(exc) or type(exc).__name__)
        finally:
            del self._wires[index]
            mesh.connection_lost(index, trio.current_time())
            self._apply()
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _maker_loop(self) -> None:
        while True:
            for address in self.mesh.dials_due(trio.current_time()):
                assert self._nursery is not None
                self._nursery.start_soon(self._dial, address)
            self._apply()
            self._wake_maker = trio.Event()
            with trio.move_on_at(self.mesh.next_dial_at()):
                await self._wake_maker.wait()

    async def _dial(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        except Exception as exc:  # one target's failure, whatever it is, is that target's
            if isinstance(exc, trio.TooSlowError):
                reason = "connection timed out"
            elif isinstance(exc, OSError):
                reason = str(exc) or type(exc).__name__
            else:  # a resolver's UnicodeError, a bug: counted, never the router's end
                self.mesh.counters["dial_errors"] += 1
                reason = f"cannot dial: {type(exc).__name__}: {exc}"
            self.mesh.dial_failed(address, reason, trio.current_time())
            self._apply()
            return
        await self._run_connection(stream, initiator=True, target=address)

    async def _tick_loop(self) -> None:
        while True:
            self.mesh.tick(trio.current_time(), wall=time.time())
            self._apply()
            self._save_dns()
            await trio.sleep(HEARTBEAT_INTERVAL / 2)

    def _save_dns(self) -> None:
        dns = self.mesh.dns
        if self.state_dir is not None and dns.own_version != self._dns_saved:
            self._dns_saved = dns.own_version
            save_own(self.state_dir / "dns.json", dns.own())

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

    # -- operator requests (the API) --------------------------------------

    def connect(self, address: str) -> str:
        host, port = split_address(address, self.opts.port)
        if port == self.opts.port and is_local_address(host):
            raise BadInput(f"{address} is this router itself: give another host's address")
        result = self.mesh.connect(address, trio.current_time())
        self._apply()
        return result

    def forget(self, address: str) -> str | None:
        result = self.mesh.forget(address, trio.current_time())
        self._apply()
        return result

    async def ping(self, who: str, count: int, interval: float) -> PingResult:
        """``count`` pings to peer ``who`` (name or nickname) over the encrypted
        UDP path, ``interval`` apart: the path, and each round trip in ms
        (None: no answer within a second).  A peer with no direct link is
        reached through a relay: the path says which, and the pings measure
        the first hop (relays forward frames, not pings)."""
        names = self.mesh.peers_named(who)
        if not names:
            raise BadInput(f"no peer named {who!r} (see 'mesh status peers')")
        name = names[0]
        if name == self.mesh.me:
            raise BadInput(f"{who} is this router")
        hop = self.mesh.links.routes.next_hop.get(name)
        if hop is None:
            raise BadInput(f"{who} is not reachable from here (see 'mesh status peers')")
        link = self.mesh.links.by_name.get(hop)
        fwd = self.forwarder
        if link is None or link.udp_addr is None or fwd is None:
            raise BadInput(f"{who}: no encrypted UDP path yet (see 'mesh status connections')")
        rtts: list[float | None] = []
        for i in range(count):
            if i:
                await trio.sleep(interval)
            token = os.urandom(8)
            fwd.ping(hop, token)
            rtt = None
            with trio.move_on_after(1.0):
                # The forwarder's thread writes the answer and never calls into trio.
                while (rtt := fwd.pongs.pop(token, None)) is None:  # noqa: ASYNC110
                    await trio.sleep(0.001)
            rtts.append(None if rtt is None else round(rtt * 1000, 3))
        address = format_address(*link.udp_addr)
        return {
            "peer": format_name(name),
            "nickname": self.mesh.nickname_of(name),
            "via": None if hop == name else format_name(hop),
            "via_nickname": None if hop == name else self.mesh.nickname_of(hop),
            "address": address,
            "rtt_ms": rtts,
        }

    def rmpeer(self, who: str) -> str:
        result = self.mesh.rmpeer(who)
        self._apply()
        return result

    def _ident(self, container: str) -> str:
        return f"{self.mesh.name}/{container}"

    async def allocate(
        self, container: str, ns_path: str, subnet: str | None, asker: Asker | None = None
    ) -> str:
        return await self._unless_gone(
            container, self.ipam.allocate(self._ident(container), ns_path, subnet), asker
        )

    async def claim(
        self, cidr: str, container: str, ns_path: str, asker: Asker | None = None
    ) -> str:
        return await self._unless_gone(
            container, self.ipam.claim(cidr, self._ident(container), ns_path), asker
        )

    async def _unless_gone(
        self, container: str, request: Awaitable[str], asker: Asker | None
    ) -> str:
        """The address ``request`` gives ``container``; one new to it goes back
        at once when its asker has gone meanwhile (an interrupted attach): no
        allocation outlives the request that nobody will record."""
        before = self.ipam.held(self._ident(container))
        got = await request
        if asker is not None and asker.gone():
            addr = int(ipaddress.IPv4Interface(got).ip)
            if addr not in before:
                self.ipam.release(self._ident(container), [got])
                log.info("%s for %s released: its asker went away", got, container)
        return got

    def release(self, container: str, addrs: list[str] | None = None) -> list[str]:
        return self.ipam.release(self._ident(container), addrs)

    def _containers_gone(self) -> None:
        """Containers vanished without detach: the client forgets their records
        (one 'mesh prune' at a time; the next reclaim catches what it missed)."""
        if self.state_dir is None or self._nursery is None or self._pruning:
            return
        self._pruning = True
        state_dir = self.state_dir

        async def run() -> None:
            try:
                await engine.prune(state_dir)
            finally:
                self._pruning = False

        self._nursery.start_soon(run)

    def release_address(self, address: str) -> bool:
        """Let one address go, whichever container of ours holds it (Docker's
        driver); the client then forgets a record of it ('mesh prune')."""
        gone = self.ipam.release_address(address) is not None
        if gone:
            self._containers_gone()
        return gone

    def holder(self, address: str) -> str | None:
        """Which container of this host holds ``address`` (its API name), if any."""
        ident = self.ipam.holder(address)
        prefix = f"{self.mesh.name}/"
        return ident[len(prefix) :] if ident and ident.startswith(prefix) else None

    def _released(self, ident: str, addrs: list[int] | None) -> None:
        """IPAM let addresses go (detach, a container gone): their names go too."""
        now = trio.current_time()
        if addrs is None:
            n = self.mesh.dns_remove(ident, now)
        else:
            n = sum(self.mesh.dns_remove(ident, now, addr=a) for a in addrs)
        if n:
            self._apply()
            self._save_dns()

    # -- DNS requests ----------------------------------------------------

    def _fqdn(self, name: str) -> str:
        """``web01`` -> ``web01.mesh.local.``; a name with a dot is taken as whole."""
        try:
            n = normalise_name(name)
        except ValueError as exc:
            raise IpamError(str(exc)) from None
        return n if "." in n[:-1] else n + self.dns_domain

    def dns_add(self, container: str, names: list[str], addrs: list[str]) -> int:
        try:
            ints = [int(ipaddress.IPv4Address(a.split("/")[0])) for a in addrs]
        except ValueError:
            raise IpamError(f"invalid address in {addrs}: expected IPv4 addresses") from None
        if not names or not ints:
            raise IpamError("dns-add needs a name and at least one address")
        n = self.mesh.dns_add(
            self._ident(container), [self._fqdn(x) for x in names], ints, trio.current_time()
        )
        self._apply()
        self._save_dns()
        return n

    def dns_remove(self, container: str, name: str | None, addr: str | None) -> int:
        try:
            a = int(ipaddress.IPv4Address(addr.split("/")[0])) if addr else None
        except ValueError:
            raise IpamError(f"invalid address {addr!r}") from None
        n = self.mesh.dns_remove(
            self._ident(container),
            trio.current_time(),
            name=self._fqdn(name) if name else None,
            addr=a,
        )
        self._apply()
        self._save_dns()
        return n

    def dns_lookup(self, name: str) -> list[str]:
        return sorted(
            {e.address for e in self.mesh.dns.lookup(self._fqdn(name))},
            key=ipaddress.IPv4Address,
        )

    def dns_status(self) -> DnsStatus:
        opts, server = self.opts, self.dns_server
        entries = sorted(self.mesh.dns.live(), key=lambda e: (e.name, e.addr))
        return {
            "enabled": server is not None,
            "domain": self.dns_domain,
            "address": opts.dns_listen_address,
            "ttl": opts.dns_ttl,
            "upstream": [f"{h}:{p}" for h, p in server.upstreams] if server else [],
            "entries": [
                {
                    "name": e.name,
                    "address": e.address,
                    "container": e.container,
                    "peer": self.mesh.nickname_of(e.origin),
                }
                for e in entries
            ],
            "counters": server.statistics() if server else {},
        }

    # -- host access (expose / hide) ---------------------------------------

    def _apply_expose(self) -> None:
        """Make what ``expose`` recorded true on this host (after a restart too)."""
        for cidr in self.exposed["addresses"]:
            try:
                hostaccess.add_address(self.opts.bridge, cidr)
            except NetdevError as exc:
                log.error("cannot expose %s again: %s", cidr, exc)
        if self.exposed["masquerade"]:
            try:
                hostaccess.masquerade_up(self.opts.ipalloc_range, self.opts.bridge)
            except (NetdevError, OSError) as exc:
                log.error("cannot masquerade for the mesh: %s", exc)

    def _save_expose(self) -> None:
        if self.state_dir is not None:
            atomic_write(self.state_dir / "expose.json", json.dumps(self.exposed).encode())

    async def expose(self, cidr: str | None, masquerade: bool, fqdn: str | None) -> str:
        """Give this host an address on the mesh (allocated, or ``cidr``).  Idempotent."""
        ident = self._ident(EXPOSE_CONTAINER)
        have = self.exposed["addresses"]
        if cidr is not None:
            iface = str(ipaddress.IPv4Interface(cidr))
            if iface not in have:
                got = await self.ipam.claim(iface, ident, "")
                have.append(got)
        elif not have:
            have.append(await self.ipam.allocate(ident, "", None))
        self.exposed["masquerade"] = masquerade
        try:
            for a in have:
                hostaccess.add_address(self.opts.bridge, a)
            if masquerade:
                hostaccess.masquerade_up(self.opts.ipalloc_range, self.opts.bridge)
            else:
                hostaccess.masquerade_down()
        except (NetdevError, OSError) as exc:
            raise IpamError(f"expose failed: {exc}") from None
        self._save_expose()
        if self.dns_server is not None:
            self.mesh.dns_remove(ident, trio.current_time())
            try:
                self.dns_add(EXPOSE_CONTAINER, [fqdn or self.mesh.nickname], have)
            except IpamError as exc:  # a nickname that is no DNS name: exposed all the same
                log.warning("exposed host not named in DNS: %s (use -h FQDN)", exc)
        self._apply()
        return ", ".join(have)

    def hide(self) -> str:
        have = list(self.exposed["addresses"])
        for a in have:
            hostaccess.del_address(self.opts.bridge, a)
        hostaccess.masquerade_down()
        self.ipam.release(self._ident(EXPOSE_CONTAINER))  # its names go with it
        self.exposed = {"addresses": [], "masquerade": False}
        self._save_expose()
        return ", ".join(have)

    async def reset(self) -> str:
        """Leave the mesh for good: hide, give the address share away, stop."""
        self.hide()
        result = self.ipam.hand_over()
        self._apply()
        await trio.sleep(0.5)  # let the ring and the claims reach the new owner
        self.stop_requested.set()
        return result

    def target_addresses(self) -> list[str]:
        """Every connection target, to be kept across a restart."""
        return [t.address for t in self.mesh.targets]

    # -- introspection --------------------------------------------------

    def status(self) -> RouterStatus:
        now = trio.current_time()
        mesh, udp, fwd = self.mesh, self._udp, self.forwarder
        fstats = fwd.statistics() if fwd is not None else None
        base = mesh.status(now)
        counters = Counter(base["counters"])
        counters.update(self.boundary.counts)
        if fstats is not None:
            counters.update(fstats.counters)
        if mesh.fastpath is not None:
            counters.update({f"fastpath_{k}": v for k, v in mesh.fastpath.status().items()})
        return {
            **base,
            "counters": dict(counters),
            "version": __version__,
            "tasks": _count_tasks(),
            "threads": threading.active_count(),
            "port": self.opts.port,
            "bridge": self.opts.bridge,
            "tap": self._tap.name if self._tap else None,
            "ipalloc_range": self.opts.ipalloc_range,
            "mtu": self.opts.mtu,
            "encryption": True,
            "uptime": round(now - self.started_at, 1),
            "macs": fstats.macs if fstats is not None else 0,
            "drops": fstats.drops if fstats is not None else {},
            "offload": {
                "tap": bool(self._tap and self._tap.offload),
                "udp_gso": bool(fwd and fwd.gso),
                "udp_gro": bool(udp and udp.gro),
                "gso_sends": fwd.gso_sends if fwd else 0,
            },
            "dataplane": fwd.dataplane if fwd is not None else "python",
            "dataplane_built": native_available(),
            "protocol": protocol_versions(),
            "start_time": self.started_wall,
            "ipam": self.ipam.status(mesh.nickname_of, now),
            "dns": self.dns_status(),
            "expose": self.exposed,
        }


def _count_tasks() -> int:
    """Live trio tasks (the soak test watches this for leaks)."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    return walk(root) if root is not None else 0
