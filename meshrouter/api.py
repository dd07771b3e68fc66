"""The router's local-only API: one JSON request and one JSON reply per
connection, over a unix socket in the state directory (mode 0600).

Requests: ``{"op": "status"}``, ``{"op": "connect", "peer": ADDR}``,
``{"op": "forget", "peer": ADDR}``, ``{"op": "stop"}``.
Replies: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import trio

from .ipamservice import IpamError
from .router import Router

log = logging.getLogger("meshrouter.api")

MAX_REQUEST = 64 * 1024


async def handle_request(router: Router, request: Any, on_change: Any) -> Any:
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
            forgotten = await router.forget(peer)
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
                return await router.allocate(container, ns_path, str(subnet) if subnet else None)
            if op == "claim":
                return await router.claim(str(request.get("cidr")), container, ns_path)
            return router.release(container)
        except IpamError as exc:
            raise ValueError(str(exc)) from None
    if op == "ipam":
        return router.status()["ipam"]
    if op == "rmpeer":
        try:
            return router.rmpeer(str(request.get("peer")))
        except IpamError as exc:
            raise ValueError(str(exc)) from None
    if op == "stop":
        router.stop_requested.set()
        return "stopping"
    raise ValueError(f"unknown op {op!r}")


async def serve(
    router: Router,
    path: Path,
    on_change: Any,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await trio.Path(path).unlink(missing_ok=True)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            buf = b""
            with trio.move_on_after(5):
                while b"\n" not in buf and len(buf) < MAX_REQUEST:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    buf += chunk
            try:
                reply = {
                    "ok": True,
                    "result": await handle_request(router, json.loads(buf), on_change),
                }
            except (ValueError, json.JSONDecodeError) as exc:
                reply = {"ok": False, "error": str(exc)}
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(json.dumps(reply).encode() + b"\n")

    try:
        await trio.serve_listeners(handler, [listener], task_status=task_status)
    finally:
        with trio.CancelScope(shield=True):
            await trio.Path(path).unlink(missing_ok=True)


def call(path: Path, request: dict[str, Any], timeout: float = 45.0) -> Any:
    """Blocking client used by the launcher.  Raises OSError or RuntimeError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data)
    if not reply.get("ok"):
        raise RuntimeError(reply.get("error", "router returned an error"))
    return reply["result"]
