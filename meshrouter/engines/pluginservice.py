"""The Docker network and IPAM driver ``mesh`` on a unix socket (trio shell
around ``dockerplugin``): Docker's requests in, IPAM and veth pairs out.

Docker finds the driver by the socket's name in its plugin directory
(``/run/docker/plugins/mesh.sock``).  Every connection is served on its own
until Docker closes it; bad HTTP closes the connection and is counted.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Protocol

import trio

from meshrouter.base.boundary import Boundary
from meshrouter.base.constants import CONTAINER_GSO_MAX_SIZE
from meshrouter.base.errors import BadPacket, IpamError
from meshrouter.base.lograte import LogLimiter
from meshrouter.engines.plugin import (
    Allocate,
    Claim,
    DeleteVeth,
    HttpRequests,
    MakeVeth,
    Plugin,
    PluginError,
    Release,
    http_response,
)
from meshrouter.host.netdev import NetdevError, ip, link_exists, make_veth
from meshrouter.host.unixserver import serve_unix

log = logging.getLogger("meshrouter.plugin")
RECV = 65536


class PluginRouter(Protocol):
    """What the driver needs of the router."""

    async def allocate(self, container: str, ns_path: str, subnet: str | None) -> str: ...
    async def claim(self, cidr: str, container: str, ns_path: str) -> str: ...
    def release_address(self, address: str) -> bool: ...


class PluginService:
    def __init__(
        self,
        router: PluginRouter,
        mesh_range: str,
        bridge: str,
        mtu: int,
        dns_address: str | None = None,
        boundary: Boundary | None = None,
    ) -> None:
        self.router = router
        self.boundary = boundary if boundary is not None else Boundary(log)
        self.plugin = Plugin(mesh_range, dns_address)
        self.bridge = bridge
        self.mtu = mtu
        self.requests = 0
        self.refused = 0
        self.bad_requests = 0
        self._limit = LogLimiter()

    def statistics(self) -> dict[str, int]:
        return {"requests": self.requests, "refused": self.refused, "bad": self.bad_requests}

    async def serve(
        self,
        path: Path,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        log.info("Docker network and IPAM driver 'mesh' on %s", path)
        await serve_unix(path, self._connection, task_status=task_status)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            await self._requests(stream)
        except Exception as exc:  # this connection's alone
            self.boundary.failed("plugin", exc, trio.current_time())

    async def _requests(self, stream: trio.SocketStream) -> None:
        parser = HttpRequests()
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(RECV)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                try:
                    requests = parser.receive_untrusted(data)
                except BadPacket as exc:
                    self.bad_requests += 1
                    self._warn("bad", "bad request on the plugin socket: %s", exc)
                    return
                for req in requests:
                    reply = await self.handle(req.method, req.path, req.body)
                    try:
                        await stream.send_all(http_response(reply, keep_alive=req.keep_alive))
                    except trio.BrokenResourceError:
                        return
                    if not req.keep_alive:
                        return

    async def handle(self, method: str, path: str, body: bytes) -> dict[str, object]:
        """One request's answer: the driver's, or why it was refused."""
        self.requests += 1
        try:
            decision = self.plugin.decide(method, path, body)
            if isinstance(decision, dict):
                return decision
            result = await self._do(decision)
            return self.plugin.answer(decision, result)
        except (PluginError, IpamError, NetdevError) as exc:
            self.refused += 1
            self._warn(path, "Docker %s refused: %s", path.lstrip("/")[:60], exc)
            # The network driver API reads "Err", the IPAM API "Error".
            return {"Err": str(exc), "Error": str(exc)}
        except Exception as exc:  # a bug: this request alone fails, counted and logged
            self.refused += 1
            error = self.boundary.failed("plugin", exc, trio.current_time())
            return {"Err": error, "Error": error}

    async def _do(self, action: Allocate | Claim | Release | MakeVeth | DeleteVeth) -> str:
        if isinstance(action, Allocate):
            return await self.router.allocate(self._ident(), "", action.subnet)
        if isinstance(action, Claim):
            return await self.router.claim(action.cidr, self._ident(), "")
        if isinstance(action, Release):
            self.router.release_address(action.address)
            return ""
        if isinstance(action, MakeVeth):
            return await trio.to_thread.run_sync(self._make_veth, action)
        await trio.to_thread.run_sync(lambda: ip("link", "del", "dev", action.host, check=False))
        return ""

    def _warn(self, key: str, fmt: str, *args: object) -> None:
        held = self._limit.allow(key[:60], trio.current_time())
        if held is not None:
            log.warning(fmt + (f" ({held} more like it held back)" if held else ""), *args)

    @staticmethod
    def _ident() -> str:
        """Docker asks for addresses with no container in the request: each
        gets an ident of its own, and is given back by address."""
        return "docker-net/" + secrets.token_hex(6)

    def _make_veth(self, action: MakeVeth) -> str:
        if link_exists(action.host):  # an endpoint Docker made and lost before
            ip("link", "del", "dev", action.host, check=False)
        make_veth(action.host, action.peer, self.mtu)
        try:
            ip(
                "link",
                "set",
                "dev",
                action.peer,
                "gso_max_size",
                str(CONTAINER_GSO_MAX_SIZE),
                check=False,
            )
            ip("link", "set", "dev", action.host, "master", self.bridge)
            ip("link", "set", "dev", action.host, "up")
            out = ip("-o", "link", "show", "dev", action.peer).stdout
        except NetdevError:
            ip("link", "del", "dev", action.host, check=False)
            raise
        parts = out.split("link/ether ")
        if len(parts) < 2:
            ip("link", "del", "dev", action.host, check=False)
            raise NetdevError(f"no MAC address on {action.peer}")
        return parts[1].split()[0]
