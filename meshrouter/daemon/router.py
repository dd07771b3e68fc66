"""The router daemon's wiring: the cores and services, made once, and their tasks.

Every decision is made by a sans-IO core: ``mesh.core.Mesh`` (peers,
tie-breaks, targets, gossip, relaying) with its channels ``ipam.peer``
(addresses), ``dns.channel`` (names) and ``fastpath.channel`` (the kernel
path); the data plane runs in the forwarder thread, which shares only what
``dataplane.link`` types.  The daemon's other modules each do one job:
``connections`` (control connections' I/O), ``commands`` (the operator's
requests), ``persist`` (the state files), ``statusview`` (status assembly).

Tasks, all in one nursery: the connections (listener, maker, one task per
connection), the tick (``Mesh.tick`` twice a second), the forwarder thread,
IPAM's namespace watch, the pump, and the fast path's and DNS's servers.

After anything that may have given a core something to send, ``pump``
drains: IPAM's saves and wake-ups and releases (whose names go too), the
channels' outboxes, then the mesh's actions.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import random
import time
from pathlib import Path
from typing import cast

import trio

from meshrouter import __version__
from meshrouter.attachments import restart
from meshrouter.base import v6map
from meshrouter.base.boundary import Boundary
from meshrouter.base.constants import (
    DNS_PORT,
    FASTPATH_DEVICE,
    HEARTBEAT_INTERVAL,
    LISTEN_ALL,
)
from meshrouter.base.inputs import format_address
from meshrouter.base.names import format_name
from meshrouter.contract.certfiles import HostCredentials
from meshrouter.contract.config import RouterOptions, parse_public, parse_subnets
from meshrouter.contract.status import DnsStatus, ExposeStatus, RouterStatus
from meshrouter.daemon import statusview
from meshrouter.daemon.commands import Commands
from meshrouter.daemon.connections import Connections
from meshrouter.daemon.containers import Containers
from meshrouter.daemon.persist import StateFiles
from meshrouter.dataplane.forwarder import Forwarder
from meshrouter.dataplane.sessionstate import Mode, use_native
from meshrouter.dataplane.tap import Tap
from meshrouter.dataplane.udp import UdpSocket
from meshrouter.dns.answer import Answerer
from meshrouter.dns.channel import DnsChannel
from meshrouter.dns.records import Records, normalise_name
from meshrouter.dns.service import DnsServer, parse_upstreams
from meshrouter.fastpath.channel import FastPathChannel
from meshrouter.fastpath.core import FastPath
from meshrouter.fastpath.service import FastPathService
from meshrouter.host import hostaccess, netdev
from meshrouter.host.netdev import NetdevError
from meshrouter.ipam.service import IpamService
from meshrouter.mesh.actions import Evicted, KeysChanged, LinkUp, PasswordRetired, Readmitted
from meshrouter.mesh.channel import Channel
from meshrouter.mesh.core import Mesh, Rng
from meshrouter.mesh.topology import RELAY_ROLES
from meshrouter.proto.cert import Trust
from meshrouter.proto.handshake import AUTH_CERT

log = logging.getLogger("meshrouter")
ADVERTISE_EVERY = 60.0  # seconds between looks at this host's addresses


class _Wakeup:
    """Set by a service that has something for the pump; waited for by the pump."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


class Router:
    def __init__(
        self,
        opts: RouterOptions,
        *,
        name: bytes,
        psk: bytes | None,
        nickname: str,
        creds: HostCredentials | None = None,
        state_dir: Path | None = None,
        peers: list[str] | None = None,
        rng: Rng | None = None,
    ) -> None:
        self.opts = opts
        self.state_dir = state_dir
        self.files = StateFiles(state_dir)
        self.stop_requested = trio.Event()
        self.boundary = Boundary(log)  # what one request to a server of ours did wrong
        self._pump_wanted = _Wakeup()
        self._nursery: trio.Nursery | None = None
        self._udp: UdpSocket | None = None
        self._tap: Tap | None = None
        self.forwarder: Forwarder | None = None
        self.started_at = 0.0
        self.started_wall = 0.0
        self.serving = False  # listening, start-up done
        peers = list(opts.peers) if peers is None else peers
        self.range6 = v6map.parse_range6(opts.ipalloc_range6, opts.ipalloc_range)  # ValueError
        use_native(cast(Mode, opts.dataplane))  # --dataplane c without the C loop: ValueError
        self.fastpath: FastPathChannel | None = None
        if opts.trusted_subnets:
            trusted = parse_subnets(opts.trusted_subnets)  # ValueError names the bad one
            core = FastPath(name, bytes(6), trusted, probe_size=opts.mtu + 14)
            self.fastpath = FastPathChannel(core)
        self.fastpath_service: FastPathService | None = None
        self.ipam = IpamService(
            name,
            opts.ipalloc_range,
            opts.ipalloc_init or len(peers) + 1,
            state_dir,
            self._pump_wanted.set,
            reclaim_after=opts.reclaim_after,
        )
        records = Records(name)
        records.restore_own(self.files.load_dns(name))
        self.dns = DnsChannel(records)
        self._dns_saved = records.own_version
        channels: list[Channel] = [self.ipam.peer, self.dns]
        if self.fastpath is not None:
            channels.append(self.fastpath)
        self.mesh = Mesh(
            name=name,
            nickname=nickname,
            psk=psk or bytes(32),
            password=psk is not None,
            certs=(creds.cert, creds.seed, Trust.of(creds.cas)) if creds is not None else None,
            port=opts.port,
            ipalloc_range=opts.ipalloc_range,
            peers=peers,
            rng=rng or random.SystemRandom(),
            channels=channels,
            conn_limit=opts.conn_limit,
            version=__version__,
        )
        self.mesh.public = parse_public(opts.nat_public, opts.port)  # ValueError names it
        self.mesh.relay_role = RELAY_ROLES[opts.relay]
        self.connections = Connections(self.mesh, self.pump)
        self.commands = Commands(self)
        self.containers: Containers | None = None  # with a state directory: see run()
        self.dns_domain = normalise_name(opts.dns_domain)
        self.dns_server = self._dns_server(records) if opts.dns else None
        self.exposed: ExposeStatus = self.files.load_expose()
        if state_dir is not None:
            dns = opts.dns_listen_address if self.dns_server is not None else None
            here = restart.Settings(
                opts.bridge, opts.ipalloc_range, opts.mtu, dns, self.dns_domain,
                opts.ipalloc_range6 if self.range6 is not None else "",
            )  # fmt: skip
            self.containers = Containers(state_dir, here, self.commands)
            # A container whose namespace went may only have stopped: its
            # engine says, before its addresses go (issue 23).
            self.ipam.still_there = self.containers.still_there

    def _dns_server(self, records: Records) -> DnsServer:
        opts = self.opts
        answerer = Answerer(
            records,
            domain=self.dns_domain,
            ttl=opts.dns_ttl,
            mesh_range=opts.ipalloc_range,
            rng=random.Random(),
            range6=self.range6,
        )
        return DnsServer(
            answerer,
            address=opts.dns_listen_address,
            port=DNS_PORT,
            device=opts.bridge,
            upstreams=parse_upstreams(opts.dns_upstream, opts.dns_listen_address),
            boundary=self.boundary,
            also=(v6map.DNS_ADDRESS6,),  # for containers with IPv6 addresses
        )

    # -- lifecycle ------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        opts = self.opts
        self.started_at = trio.current_time()
        self.started_wall = time.time()
        if self.mesh.password and self.mesh.certs is not None and self.files.password_retired():
            self.mesh.password = False  # retired before this restart: still retired
            self.mesh.identity = dataclasses.replace(self.mesh.identity, auth=AUTH_CERT)
            log.info("the mesh password was retired: only certificates are accepted")
        if self.mesh.password:
            self._load_keys()
        if self.mesh.certs is not None:
            self.mesh.certs.wall_offset = time.time() - trio.current_time()
            self.mesh.certs.restore(self.files.load_revocations())
            for name in {n for r in self.mesh.certs.revocations for n in r.names}:
                self._evict(name)
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
            join=self._tap.offload,  # --no-offload: the TAP gets the segments as they came
        )
        self._fastpath_up()
        try:
            # '::': a listener of each family (trio skips one the kernel lacks)
            every = opts.listen in LISTEN_ALL
            listeners = await trio.open_tcp_listeners(
                opts.port, host=None if every else opts.listen
            )
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.connections.serve, listeners)
                await nursery.start(self._forwarder_task)
                nursery.start_soon(self._tick_loop)
                nursery.start_soon(self._advertise_loop)
                nursery.start_soon(self._pump_loop)
                nursery.start_soon(self.ipam.watch_namespaces)
                if self.fastpath_service is not None:
                    await nursery.start(self.fastpath_service.serve)
                if self.dns_server is not None:
                    await self._dns_up(nursery)
                self.commands.apply_expose()
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
                hostaccess.dns_down(opts.bridge, opts.dns_listen_address, v6map.DNS_ADDRESS6)
            if self.exposed["masquerade"]:
                hostaccess.masquerade_down()
            self.ipam.close()
            if self.fastpath_service is not None:
                self.fastpath_service.down()
            self.forwarder.close()
            udp.close()
            self._tap.close()

    def _fastpath_up(self) -> None:
        channel, forwarder, tap = self.fastpath, self.forwarder, self._tap
        if channel is None or forwarder is None or tap is None:
            return
        service = FastPathService(
            channel.core, bridge=self.opts.bridge, tap=tap.name, device=FASTPATH_DEVICE,
            macs=lambda: forwarder.mac_view,
        )  # fmt: skip
        try:
            service.up()
        except (NetdevError, OSError) as exc:
            log.error("no kernel fast path (trusted links stay encrypted): %s", exc)
            service.down()
            self.mesh.drop_channel(channel)
            self.fastpath = None
        else:
            forwarder.publish_macs = True
            self.fastpath_service = service

    async def _dns_up(self, nursery: trio.Nursery) -> None:
        opts, server, tap = self.opts, self.dns_server, self._tap
        assert server is not None
        assert tap is not None
        try:
            hostaccess.dns_up(opts.bridge, tap.name, opts.dns_listen_address, v6map.DNS_ADDRESS6)
        except NetdevError as exc:
            log.warning("DNS may be answered by other hosts' routers: %s", exc)
        try:
            await nursery.start(server.serve)
        except OSError as exc:
            log.error(
                "no DNS: cannot listen on %s port %d: %s (--dns-listen-address, or --no-dns)",
                opts.dns_listen_address,
                DNS_PORT,
                exc,
            )
            self.dns_server = None

    async def shutdown(self, reason: str = "router shutting down") -> None:
        await self.connections.close_all(reason)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def target_addresses(self) -> list[str]:
        """Every connection target, to be kept across a restart."""
        return [t.address for t in self.mesh.targets]

    # -- after every event: what the cores want done ----------------------

    def pump(self) -> None:
        self.ipam.settle()
        now = trio.current_time()
        if self.ipam.take_reaped():
            self.containers_gone()
        for ident, addrs in self.ipam.peer.take_released():
            # IPAM let addresses go (detach, a container gone): their names go too.
            if addrs is None:
                self.dns.remove(ident, now)
            else:
                for a in addrs:
                    self.dns.remove(ident, now, addr=a)
        self.mesh.flush()
        self._save_dns()
        if self.fastpath is not None and self.fastpath_service is not None:
            probes, changed = self.fastpath.take_work()
            if probes:
                self.fastpath_service.send_probes(probes)
            if changed:
                self.fastpath_service.path_changed()
        for action in self.mesh.take_actions():
            if self.connections.apply(action):
                continue
            if isinstance(action, LinkUp) and self.forwarder is not None:
                self.forwarder.kick()
            elif isinstance(action, KeysChanged):
                self._save_keys()
            elif isinstance(action, PasswordRetired):
                try:
                    self.files.save_password_retired()
                except OSError as exc:
                    self.mesh.counters["state_write_errors"] += 1
                    log.error("cannot save that the password is retired: %s", exc)
            elif isinstance(action, Readmitted):
                self.dns.records.banned.discard(action.name)
                log.info("peer %s is back with a valid certificate", format_name(action.name))
            elif isinstance(action, Evicted):
                self._save_revocations()
                for name in action.names:
                    self._evict(name)

    def _evict(self, name: bytes) -> None:
        """A peer whose certificate was revoked: its names go for good, its
        address share is taken over as soon as it is out of reach."""
        if name != self.mesh.me:
            self.dns.records.ban_origin(name)
            self.ipam.peer.peer_evicted(name)

    def _save_revocations(self) -> None:
        assert self.mesh.certs is not None
        try:
            self.files.save_revocations(self.mesh.certs.revocations)
        except OSError as exc:  # held in memory and re-flooded; saved at the next one
            self.mesh.counters["state_write_errors"] += 1
            log.error("cannot save the revocations: %s", exc)

    async def _pump_loop(self) -> None:
        """For what a service did between events (IPAM's waiting API calls)."""
        while True:
            await self._pump_wanted.wait()
            self.pump()

    async def _advertise_loop(self) -> None:
        """Our listening addresses, for every peer to dial (found again each
        minute: a host's addresses change)."""
        while True:
            try:
                found = await trio.to_thread.run_sync(self._own_addresses)
            except (OSError, NetdevError) as exc:
                log.debug("cannot list this host's addresses: %s", exc)
            else:
                self.mesh.advertise(found)
                self.pump()
            await trio.sleep(ADVERTISE_EVERY)

    def _own_addresses(self) -> list[str]:
        """``host:port`` of each address we listen on that a peer may reach:
        with ``--listen ::``, the host's global addresses less the mesh's own
        devices and addresses (exposed ones); else the one listened on."""
        opts = self.opts
        if opts.listen not in LISTEN_ALL:
            found = [opts.listen] if opts.listen not in ("0.0.0.0",) else []
        else:
            skip = {opts.bridge, opts.tap, FASTPATH_DEVICE}
            found = netdev.global_addresses(skip)
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
            ipaddress.ip_network(opts.ipalloc_range)
        ]
        if self.range6 is not None:
            nets.append(self.range6.v6)
        out = []
        for a in found:
            try:
                addr = ipaddress.ip_address(a)
            except ValueError:  # a --listen name: peers learn our address from connections
                continue
            if any(addr.version == n.version and addr in n for n in nets):
                continue
            out.append(format_address(a, opts.port))
        return out

    async def _tick_loop(self) -> None:
        while True:
            self.mesh.tick(trio.current_time(), wall=time.time())
            self.pump()
            await trio.sleep(HEARTBEAT_INTERVAL / 2)

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

    # -- persistence ------------------------------------------------------

    def _load_keys(self) -> None:
        """The key ring of an earlier run (a rotation survives restarts), with
        the launch password's key taken in; called in trio, before any connection."""
        ring = self.files.load_keys(self.mesh.keys.current, trio.current_time(), time.time())
        if ring is not None:
            self.mesh.keys = ring
            self._save_keys()

    def _save_keys(self) -> None:
        self.files.save_keys(self.mesh.keys, trio.current_time(), time.time())

    def _save_dns(self) -> None:
        records = self.dns.records
        if records.own_version != self._dns_saved:
            self._dns_saved = records.own_version
            self.files.save_dns(records.own())

    def containers_gone(self) -> None:
        """Containers vanished without detach: their attachment records go."""
        if self.containers is not None and self._nursery is not None:
            self._nursery.start_soon(self.containers.prune)

    # -- status -----------------------------------------------------------

    def status(self) -> RouterStatus:
        return statusview.router_status(self, trio.current_time())

    def dns_status(self) -> DnsStatus:
        return statusview.dns_status(self)
