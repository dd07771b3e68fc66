"""The control connections' I/O: the listener's connections, the dialler and
the connection maker, each connection's task, and the mesh actions that
concern connections (flush, close, dial again, wake the maker).

One task per connection reads bytes into ``Mesh.receive_data`` (or a timer
into ``handle_timer``), asks the router to ``pump`` (channels, then actions),
and writes what the connection has to send.  A bug in one connection's task
ends that connection, counted, never the router.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

import trio

from meshrouter.mesh.actions import Action, Close, Flush, Redial, TargetsChanged
from meshrouter.mesh.core import Mesh

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


class Connections:
    def __init__(self, mesh: Mesh, pump: Callable[[], None]) -> None:
        self.mesh = mesh
        self._pump = pump
        self._wires: dict[int, _Wire] = {}
        self._wake_maker = trio.Event()
        self.nursery: trio.Nursery | None = None

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The listener and the connection maker, until cancelled."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await nursery.start(trio.serve_listeners, self._inbound, listeners)
            nursery.start_soon(self._maker_loop)
            task_status.started()

    def apply(self, action: Action) -> bool:
        """Carry out a connection's action; False if it is none of ours."""
        if isinstance(action, Flush):
            self._spawn(self._flush_quietly, action.index)
        elif isinstance(action, Close):
            self._spawn(self._finish_close, action.index)
        elif isinstance(action, TargetsChanged):
            self._wake_maker.set()
        elif isinstance(action, Redial):
            if self.nursery is not None:
                self.nursery.start_soon(self._dial, action.address)
        else:
            return False
        return True

    async def close_all(self, reason: str) -> None:
        """Close every connection, sending each its CLOSE (at shutdown)."""
        self.mesh.close_all(reason, trio.current_time())
        for action in self.mesh.take_actions():
            if isinstance(action, Close):
                await self._finish_close(action.index)

    def _spawn(self, fn: Callable[[int], Awaitable[None]], index: int) -> None:
        if self.nursery is not None and index in self._wires:
            self.nursery.start_soon(fn, index)

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
                    self._pump()
                    await self._flush(index)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            mesh.receive_eof(index, trio.current_time(), str(exc) or type(exc).__name__)
        finally:
            del self._wires[index]
            mesh.connection_lost(index, trio.current_time())
            self._pump()
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _maker_loop(self) -> None:
        while True:
            for address in self.mesh.maker.dials_due(trio.current_time()):
                assert self.nursery is not None
                self.nursery.start_soon(self._dial, address)
            self._pump()
            self._wake_maker = trio.Event()
            with trio.move_on_at(self.mesh.maker.next_dial_at()):
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
            self.mesh.maker.dial_failed(address, reason, trio.current_time())
            self._pump()
            return
        await self._run_connection(stream, initiator=True, target=address)
