"""The router's local-only API server: one JSON request and one JSON reply per
connection, over a unix socket in the state directory (mode 0600).

Requests (``op`` and its fields)::

    status                              -> RouterStatus
    connect  peer=ADDR                  -> the canonical address
    forget   peer=ADDR                  -> the canonical address
    allocate container ns_path [subnet] -> "ADDR/PREFIX"
    claim    container ns_path cidr     -> "ADDR/PREFIX"
    release  container [addrs]          -> [released addresses] (only addrs, if given)
    holder   address                    -> the container of this host holding it, or null
    password_rotate password [window]   -> what was done (a new mesh password, for every peer)
    ipam                                -> IpamStatus
    rmpeer   peer=NAME                  -> a sentence
    ping     peer=NAME [count] [interval] -> PingResult (the path, round trips in ms)
    dns                                 -> DnsStatus (settings and entries)
    dns_add  container names addrs      -> how many entries are new
    dns_remove container [name] [addr]  -> how many entries went
    dns_lookup name                     -> [addresses]
    expose   [cidr] masquerade [fqdn]   -> "ADDR/PREFIX, ..."
    hide                                -> the addresses the host had
    reset                               -> a sentence; the router then stops
    stop                                -> "stopping"

Replies: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
The client is ``apiclient``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import trio

from meshrouter.base.boundary import Boundary
from meshrouter.base.errors import BadInput, IpamError
from meshrouter.base.inputs import json_untrusted
from meshrouter.contract.status import DnsStatus, PingResult, RouterStatus
from meshrouter.host.unixserver import serve_unix

log = logging.getLogger("meshrouter.api")

MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT = 5.0


class RouterApi(Protocol):
    """What the API asks of the router (``router.Router``)."""

    stop_requested: trio.Event
    boundary: Boundary

    def status(self) -> RouterStatus: ...
    def connect(self, address: str) -> str: ...
    def forget(self, address: str) -> str | None: ...
    async def allocate(
        self, container: str, ns_path: str, subnet: str | None, asker: Asker | None = None
    ) -> str: ...
    async def claim(
        self, cidr: str, container: str, ns_path: str, asker: Asker | None = None
    ) -> str: ...
    def release(self, container: str, addrs: list[str] | None = None) -> list[str]: ...
    def holder(self, address: str) -> str | None: ...
    async def rotate_password(self, password: str, window: float | None) -> str: ...
    def rmpeer(self, who: str) -> str: ...
    async def ping(self, who: str, count: int, interval: float) -> PingResult: ...
    def dns_status(self) -> DnsStatus: ...
    def dns_add(self, container: str, names: list[str], addrs: list[str]) -> int: ...
    def dns_remove(self, container: str, name: str | None, addr: str | None) -> int: ...
    def dns_lookup(self, name: str) -> list[str]: ...
    async def expose(self, cidr: str | None, masquerade: bool, fqdn: str | None) -> str: ...
    def hide(self) -> str: ...
    async def reset(self) -> str: ...


class Asker:
    """The client at the other end of one request's connection."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def gone(self) -> bool:
        """Whether it has closed its end (it sends nothing after its request,
        so a hang-up is all there can be to read)."""
        poll = select.poll()
        poll.register(self.fd, select.POLLRDHUP | select.POLLHUP)
        return any(
            ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, ev in poll.poll(0)
        )


async def handle_request(
    router: RouterApi, request: Any, on_change: Callable[[], None], asker: Asker | None = None
) -> Any:
    """The result of one request.  Raises ValueError with a one-line reason."""
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise ValueError('request must be a JSON object with an "op" string')
    op = request["op"]
    if op == "status":
        return router.status()
    if op in ("connect", "forget"):
        peer = request.get("peer")
        if not isinstance(peer, str):
            raise ValueError(f'"{op}" needs a "peer" address string')
        if op == "connect":
            result = router.connect(peer)
        else:
            forgotten = router.forget(peer)
            if forgotten is None:
                raise ValueError(f"{peer} is not a connection target (see 'mesh status targets')")
            result = forgotten
        on_change()
        return result
    if op in ("allocate", "claim", "release"):
        container = request.get("container")
        if not isinstance(container, str) or not container:
            raise ValueError(f'"{op}" needs a "container" string')
        ns_path = str(request.get("ns_path") or "")
        try:
            if op == "allocate":
                subnet = request.get("subnet")
                sub = str(subnet) if subnet else None
                return await router.allocate(container, ns_path, sub, asker)
            if op == "claim":
                return await router.claim(str(request.get("cidr")), container, ns_path, asker)
            addrs = request.get("addrs")
            if addrs is not None:
                addrs = _strings(request, "addrs")
            return router.release(container, addrs)
        except IpamError as exc:
            raise ValueError(str(exc)) from None
    if op == "ipam":
        return router.status()["ipam"]
    if op == "holder":
        try:
            return router.holder(str(request.get("address")))
        except IpamError as exc:
            raise ValueError(str(exc)) from None
    if op == "ping":
        peer, count, interval = (
            request.get("peer"),
            request.get("count", 3),
            request.get("interval", 0.2),
        )
        if not isinstance(peer, str) or not peer:
            raise BadInput('"ping" needs a "peer" name')
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 100:
            raise BadInput('"ping": "count" must be a number from 1 to 100')
        if not isinstance(interval, int | float) or not 0.01 <= interval <= 10:
            raise BadInput('"ping": "interval" must be from 0.01 to 10 seconds')
        return await router.ping(peer, count, float(interval))
    if op == "rmpeer":
        try:
            return router.rmpeer(str(request.get("peer")))
        except IpamError as exc:
            raise ValueError(str(exc)) from None
    if op.startswith("dns") or op in ("expose", "hide", "reset"):
        try:
            return await _dns_and_host(router, op, request)
        except IpamError as exc:
            raise ValueError(str(exc)) from None
    if op == "password_rotate":
        password = request.get("password")
        window = request.get("window")
        if not isinstance(password, str) or (
            window is not None and not isinstance(window, int | float)
        ):
            raise ValueError('"password_rotate" needs a "password" string (and a numeric "window")')
        try:
            return await router.rotate_password(password, float(window) if window else None)
        except IpamError as exc:
            raise ValueError(str(exc)) from None
    if op == "stop":
        router.stop_requested.set()
        return "stopping"
    raise ValueError(f"unknown op {op!r}")


def _strings(request: dict[str, Any], key: str) -> list[str]:
    value = request.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'"{request["op"]}" needs "{key}", a list of strings')
    return value


def _opt_str(request: dict[str, Any], key: str) -> str | None:
    value = request.get(key)
    return value if isinstance(value, str) and value else None


async def _dns_and_host(router: RouterApi, op: str, request: dict[str, Any]) -> Any:
    if op == "dns":
        return router.dns_status()
    if op == "dns_lookup":
        name = _opt_str(request, "name")
        if name is None:
            raise ValueError('"dns_lookup" needs a "name" string')
        return router.dns_lookup(name)
    if op in ("dns_add", "dns_remove"):
        container = _opt_str(request, "container")
        if container is None:
            raise ValueError(f'"{op}" needs a "container" string')
        if op == "dns_add":
            return router.dns_add(container, _strings(request, "names"), _strings(request, "addrs"))
        return router.dns_remove(container, _opt_str(request, "name"), _opt_str(request, "addr"))
    if op == "expose":
        return await router.expose(
            _opt_str(request, "cidr"),
            bool(request.get("masquerade", True)),
            _opt_str(request, "fqdn"),
        )
    if op == "hide":
        return router.hide()
    if op == "reset":
        return await router.reset()
    raise ValueError(f"unknown op {op!r}")


async def handle_stream(
    router: RouterApi, stream: trio.abc.Stream, on_change: Callable[[], None]
) -> None:
    """Read one request (a line of JSON, bounded in size and time), answer it."""
    async with stream:
        buf = b""
        with trio.move_on_after(REQUEST_TIMEOUT):
            while b"\n" not in buf and len(buf) < MAX_REQUEST:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                buf += chunk
        try:
            request = json_untrusted(buf, what="request", max_bytes=MAX_REQUEST)
            asker = Asker(stream.socket.fileno()) if isinstance(stream, trio.SocketStream) else None
            result = await handle_request(router, request, on_change, asker)
            reply = {"ok": True, "result": result}
            data = json.dumps(reply).encode()
        except Exception as exc:  # this request's alone: the next one is served
            error = router.boundary.failed("api", exc, trio.current_time())
            data = json.dumps({"ok": False, "error": error}).encode()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(data + b"\n")
            # What an oversized request has left unread would reset the
            # connection, and the client would never see why it was refused.
            with trio.move_on_after(1.0 if len(buf) >= MAX_REQUEST else 0):
                for _ in range(MAX_REQUEST // 4096):
                    if not await stream.receive_some(65536):
                        break


async def serve(
    router: RouterApi,
    path: Path,
    on_change: Callable[[], None],
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await handle_stream(router, stream, on_change)

    await serve_unix(path, handler, task_status=task_status)
