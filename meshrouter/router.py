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
import logging
import os
import random
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from . import __version__
from .config import RouterOptions
from .constants import HEARTBEAT_INTERVAL
from .forwarder import Forwarder
from .ipamservice import IpamService
from .mesh import Close, Flush, LinkUp, Mesh, Rng, TargetsChanged
from .netdev import Tap
from .status import RouterStatus
from .udp import UdpSocket

log = logging.getLogger("meshrouter")

CONNECT_TIMEOUT = 5.0
CLOSE_FLUSH_TIMEOUT = 1.0


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
        self._wires: dict[int, _Wire] = {}
        self._wake_maker = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._udp: UdpSocket | None = None
        self._tap: Tap | None = None
        self.forwarder: Forwarder | None = None
        self.started_at = 0.0
        peers = list(opts.peers) if peers is None else peers
        self.ipam = IpamService(
            name, opts.ipalloc_range, opts.ipalloc_init or len(peers) + 1, state_dir, self
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
        )

    # -- lifecycle ------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        opts = self.opts
        self.started_at = trio.current_time()
        udp = self._udp = UdpSocket(opts.listen, opts.port, gso=opts.offload, gro=opts.offload)
        self._tap = Tap(opts.tap, opts.bridge, opts.mtu, offload=opts.offload)
        self.forwarder = Forwarder(
            me=self.mesh.me,
            tap_fd=self._tap.fd,
            udp=udp,
            links=self.mesh.links,
            now=trio.lowlevel.current_clock().current_time,
            busy_poll=opts.busy_poll_us / 1e6,
        )
        try:
            listeners = await trio.open_tcp_listeners(opts.port, host=opts.listen)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(trio.serve_listeners, self._inbound, listeners)
                await nursery.start(self._forwarder_task)
                nursery.start_soon(self._maker_loop)
                nursery.start_soon(self._tick_loop)
                log.info(
                    "router %s (%s) listening on %s, TCP and UDP port %d, bridge %s",
                    self.mesh.name,
                    self.mesh.nickname,
                    opts.listen,
                    opts.port,
                    opts.bridge,
                )
                task_status.started()
        finally:
            self.ipam.close()
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
        except (OSError, trio.TooSlowError) as exc:
            reason = "connection timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
            self.mesh.dial_failed(address, reason, trio.current_time())
            self._apply()
            return
        await self._run_connection(stream, initiator=True, target=address)

    async def _tick_loop(self) -> None:
        while True:
            self.mesh.tick(trio.current_time())
            self._apply()
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

    # -- operator requests (the API) --------------------------------------

    def connect(self, address: str) -> str:
        result = self.mesh.connect(address, trio.current_time())
        self._apply()
        return result

    def forget(self, address: str) -> str | None:
        result = self.mesh.forget(address, trio.current_time())
        self._apply()
        return result

    def rmpeer(self, who: str) -> str:
        result = self.mesh.rmpeer(who)
        self._apply()
        return result

    def _ident(self, container: str) -> str:
        return f"{self.mesh.name}/{container}"

    async def allocate(self, container: str, ns_path: str, subnet: str | None) -> str:
        return await self.ipam.allocate(self._ident(container), ns_path, subnet)

    async def claim(self, cidr: str, container: str, ns_path: str) -> str:
        return await self.ipam.claim(cidr, self._ident(container), ns_path)

    def release(self, container: str) -> list[str]:
        return self.ipam.release(self._ident(container))

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
        if fstats is not None:
            counters.update(fstats.counters)
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
                "udp_gso": bool(udp and udp.gso),
                "udp_gro": bool(udp and udp.gro),
                "gso_sends": udp.gso_sends if udp else 0,
            },
            "ipam": self.ipam.status(mesh.nickname_of),
        }


def _count_tasks() -> int:
    """Live trio tasks (the soak test watches this for leaks)."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    return walk(root) if root is not None else 0
