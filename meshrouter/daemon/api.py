"""The router's local-only API server: one JSON request and one JSON reply per
connection, over a unix socket in the state directory (mode 0600).

The requests are the types of ``contract.requests`` (their fields and
results are documented there); ``HANDLERS`` says what each does, one row a
request.  Replies: ``{"ok": true, "result": ...}`` or ``{"ok": false,
"error": "..."}``.  The client is ``contract.apiclient``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import trio

from meshrouter.base.boundary import Boundary
from meshrouter.base.errors import BadInput
from meshrouter.base.inputs import json_untrusted
from meshrouter.contract import requests as rq
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
    def revoke(self, text: str) -> str: ...
    def renew_cert(self, cert: str, key: str, ca: str) -> str: ...
    def retire_password(self) -> str: ...
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


Handler = Callable[[RouterApi, Any, "Asker | None"], Awaitable[Any]]


def _sync(fn: Callable[[RouterApi, Any], Any]) -> Handler:
    async def run(router: RouterApi, q: Any, asker: Asker | None) -> Any:
        return fn(router, q)

    return run


async def _allocate(router: RouterApi, q: rq.Allocate, asker: Asker | None) -> str:
    return await router.allocate(q.container, q.ns_path, q.subnet, asker)


async def _claim(router: RouterApi, q: rq.Claim, asker: Asker | None) -> str:
    return await router.claim(q.cidr, q.container, q.ns_path, asker)


def _forget(router: RouterApi, q: rq.Forget) -> str:
    forgotten = router.forget(q.peer)
    if forgotten is None:
        raise BadInput(f"{q.peer} is not a connection target (see 'mesh status targets')")
    return forgotten


def _stop(router: RouterApi, q: rq.Stop) -> str:
    router.stop_requested.set()
    return "stopping"


# What each request does; ``CHANGES_TARGETS``: those after which the targets are saved.
HANDLERS: dict[type[rq.Request[Any]], Handler] = {
    rq.Status: _sync(lambda r, q: r.status()),
    rq.Connect: _sync(lambda r, q: r.connect(q.peer)),
    rq.Forget: _sync(_forget),
    rq.Allocate: _allocate,
    rq.Claim: _claim,
    rq.Release: _sync(lambda r, q: r.release(q.container, q.addrs)),
    rq.Holder: _sync(lambda r, q: r.holder(q.address)),
    rq.PasswordRotate: lambda r, q, a: r.rotate_password(q.password, q.window),
    rq.Revoke: _sync(lambda r, q: r.revoke(q.revocation)),
    rq.CertRenew: _sync(lambda r, q: r.renew_cert(q.cert, q.key, q.ca)),
    rq.PasswordRetire: _sync(lambda r, q: r.retire_password()),
    rq.Ipam: _sync(lambda r, q: r.status()["ipam"]),
    rq.Rmpeer: _sync(lambda r, q: r.rmpeer(q.peer)),
    rq.Ping: lambda r, q, a: r.ping(q.peer, q.count, q.interval),
    rq.Dns: _sync(lambda r, q: r.dns_status()),
    rq.DnsAdd: _sync(lambda r, q: r.dns_add(q.container, q.names, q.addrs)),
    rq.DnsRemove: _sync(lambda r, q: r.dns_remove(q.container, q.name, q.addr)),
    rq.DnsLookup: _sync(lambda r, q: r.dns_lookup(q.name)),
    rq.Expose: lambda r, q, a: r.expose(q.cidr, q.masquerade, q.fqdn),
    rq.Hide: _sync(lambda r, q: r.hide()),
    rq.Reset: lambda r, q, a: r.reset(),
    rq.Stop: _sync(_stop),
}
CHANGES_TARGETS = {rq.Connect, rq.Forget}


async def handle_request(
    router: RouterApi, request: Any, on_change: Callable[[], None], asker: Asker | None = None
) -> Any:
    """The result of one request.  Raises ValueError (BadInput, OperatorError)
    with a one-line reason."""
    q = rq.parse_untrusted(request)
    result = await HANDLERS[type(q)](router, q, asker)
    if type(q) in CHANGES_TARGETS:
        on_change()
    return result


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
