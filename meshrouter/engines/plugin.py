"""Docker's remote network and IPAM driver ``mesh``, sans IO.

Docker (libnetwork) finds the plugin by its socket under
``/run/docker/plugins/`` and POSTs JSON to ``/Plugin.Activate``,
``/NetworkDriver.*`` and ``/IpamDriver.*``.  This module reads those
requests (``HttpRequests``: bytes in, requests out; nothing but BadPacket on
bad input) and decides what each one means (``Plugin.decide``): an answer
at once, or an ``Action`` the shell carries out (an address from the mesh's
IPAM, a veth pair on the bridge) before it answers with ``Plugin.answer``.

What Docker sees (as with Weave Net's ``weavemesh`` driver):

* ``docker network create -d mesh --ipam-driver mesh NAME``: the pool is the
  mesh range (or ``--subnet``, inside it); the pool id names the subnet and
  the range to allocate from, so nothing about pools needs remembering.  The
  "gateway" Docker insists on is the subnet's network address, never used:
  containers on the mesh have no gateway (the mesh is one layer-2 network).
* An endpoint is a veth pair made at CreateEndpoint (its host end on the
  bridge, up), whose other end Docker moves into the container as ``ethwe0``
  at Join; DeleteEndpoint removes it.  Names come from the endpoint id.
* Addresses are the mesh's IPAM allocations (or claims, for ``--ip``), each
  under an ident of its own; ReleaseAddress gives the address back mesh-wide.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from meshrouter.base.errors import BadInput, BadPacket
from meshrouter.base.inputs import json_untrusted

DRIVER = "mesh"
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
GATEWAY_LABEL = "com.docker.network.gateway"
ADDRESS_TYPE = "RequestAddressType"
CONTAINER_PREFIX = "ethwe"
ROUTE_CONNECTED = 1  # libnetwork's route type: on-link, no next hop


class PluginError(Exception):
    """A request Docker may make but we refuse: the message goes back as ``Err``."""


# -- HTTP, just what Docker's plugin client sends ---------------------------------


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    body: bytes
    keep_alive: bool


class HttpRequests:
    """Bytes from one connection in, whole requests out (HTTP/1.1 with
    Content-Length bodies, as Go's client sends JSON).  ``receive_untrusted``
    raises nothing but BadPacket; after one the connection must be closed."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def receive_untrusted(self, data: bytes) -> list[HttpRequest]:
        self._buf += data
        out: list[HttpRequest] = []
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    raise BadPacket("HTTP request head too long")
                return out
            try:
                head = bytes(self._buf[:end]).decode("ascii")
            except UnicodeDecodeError:
                raise BadPacket("HTTP request head is not ASCII") from None
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                raise BadPacket(f"bad HTTP request line {lines[0][:60]!r}")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep or not name or name != name.strip():
                    raise BadPacket(f"bad HTTP header line {line[:60]!r}")
                headers[name.lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                raise BadPacket("chunked HTTP bodies are not supported")
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise BadPacket("bad Content-Length") from None
            if not 0 <= length <= MAX_BODY:
                raise BadPacket(f"HTTP body of {length} bytes refused")
            if len(self._buf) < end + 4 + length:
                return out
            body = bytes(self._buf[end + 4 : end + 4 + length])
            del self._buf[: end + 4 + length]
            keep = headers.get("connection", "").lower() != "close" and parts[2] == "HTTP/1.1"
            out.append(HttpRequest(parts[0], parts[1], body, keep))


def http_response(doc: dict[str, Any], *, status: int = 200, keep_alive: bool = True) -> bytes:
    body = json.dumps(doc).encode()
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + body


# -- what a request asks for ----------------------------------------------------------


@dataclass(frozen=True)
class Allocate:
    """An address in ``subnet`` (CIDR), for a new ident; answer with prefix ``prefixlen``."""

    subnet: str
    prefixlen: int


@dataclass(frozen=True)
class Claim:
    """This very address (``--ip``)."""

    cidr: str


@dataclass(frozen=True)
class Release:
    address: str


@dataclass(frozen=True)
class MakeVeth:
    """A veth pair: ``host`` on the bridge and up, ``peer`` for Docker to move."""

    host: str
    peer: str


@dataclass(frozen=True)
class DeleteVeth:
    host: str


Action = Allocate | Claim | Release | MakeVeth | DeleteVeth
Decision = dict[str, Any] | Action


def veth_names(endpoint_id: str) -> tuple[str, str]:
    """(host end, container end) for an endpoint: 15-character names from its id."""
    return "vethwd" + endpoint_id[:9], "vethwg" + endpoint_id[:9]


def pool_id(subnet: ipaddress.IPv4Network, iprange: ipaddress.IPv4Network) -> str:
    return f"{DRIVER}-{subnet}-{iprange}"


def parse_pool_id(text: str) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Network]:
    parts = text.split("-")
    if len(parts) != 3 or parts[0] != DRIVER:
        raise PluginError(f"unknown pool {text!r}: not made by the mesh IPAM driver")
    try:
        return ipaddress.IPv4Network(parts[1]), ipaddress.IPv4Network(parts[2])
    except ValueError:
        raise PluginError(f"unknown pool {text!r}: not made by the mesh IPAM driver") from None


def _str(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PluginError(f"{key} must be a string")
    return value


def _id(doc: dict[str, Any], key: str) -> str:
    value = _str(doc, key)
    if not value or not all(c in "0123456789abcdefABCDEF" for c in value) or len(value) < 9:
        raise PluginError(f"{key} must be a hexadecimal id")
    return value


class Plugin:
    """The decisions of the driver for one mesh range (no state of its own:
    pools live in their ids, endpoints in their names, addresses in IPAM)."""

    def __init__(self, mesh_range: str, dns_address: str | None = None) -> None:
        self.range = ipaddress.IPv4Network(mesh_range)
        self.dns_address = dns_address  # the router's DNS server on the bridge

    def decide(self, verb: str, path: str, body: bytes) -> Decision:
        """The answer to one request, or what to do before answering.
        Raises PluginError (refused: tell Docker why) for any bad request."""
        method = path.lstrip("/")
        if verb != "POST":
            raise PluginError(f"{verb} {path[:60]}: the plugin API takes POST")
        try:
            doc = json_untrusted(body, what=method[:60], max_bytes=MAX_BODY) if body.strip() else {}
        except BadInput as exc:
            raise PluginError(str(exc)) from None
        if not isinstance(doc, dict):
            raise PluginError(f"{method}: the request is not a JSON object")
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None or not method.startswith(("Plugin.", "NetworkDriver.", "IpamDriver.")):
            raise PluginError(f"{method}: not supported by the mesh driver")
        result: Decision = handler(doc)
        return result

    def answer(self, action: Action, result: str) -> dict[str, Any]:
        """Docker's answer once ``action`` is done (``result``: the address, or
        the container end's MAC for MakeVeth)."""
        if isinstance(action, Allocate | Claim):
            iface = ipaddress.IPv4Interface(result)
            prefix = action.prefixlen if isinstance(action, Allocate) else iface.network.prefixlen
            return {"Address": f"{iface.ip}/{prefix}", "Data": {}}
        if isinstance(action, MakeVeth):
            return {"Interface": {"MacAddress": result}}
        return {}

    # -- the plugin ----------------------------------------------------------------

    def _Plugin_Activate(self, doc: dict[str, Any]) -> Decision:
        return {"Implements": ["NetworkDriver", "IpamDriver"]}

    # -- IPAM ----------------------------------------------------------------------

    def _IpamDriver_GetCapabilities(self, doc: dict[str, Any]) -> Decision:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def _IpamDriver_GetDefaultAddressSpaces(self, doc: dict[str, Any]) -> Decision:
        return {"LocalDefaultAddressSpace": "meshlocal", "GlobalDefaultAddressSpace": "meshglobal"}

    def _IpamDriver_RequestPool(self, doc: dict[str, Any]) -> Decision:
        if doc.get("V6"):
            raise PluginError("the mesh carries IPv4 only: create the network without --ipv6")
        pool, sub = _str(doc, "Pool"), _str(doc, "SubPool")
        try:
            subnet = ipaddress.IPv4Network(pool) if pool else self.range
            iprange = ipaddress.IPv4Network(sub) if sub else subnet
        except ValueError as exc:
            raise PluginError(f"invalid subnet: {exc}") from None
        if not subnet.subnet_of(self.range) and not self.range.subnet_of(subnet):
            raise PluginError(
                f"subnet {subnet} is outside the mesh range {self.range}: "
                "give --subnet inside it (see 'mesh status')"
            )
        if not iprange.subnet_of(subnet) or not iprange.subnet_of(self.range):
            raise PluginError(
                f"--ip-range {iprange} must lie inside the subnet {subnet} and the "
                f"mesh range {self.range}"
            )
        return {
            "PoolID": pool_id(subnet, iprange),
            "Pool": str(subnet),
            "Data": {GATEWAY_LABEL: f"{subnet.network_address}/{subnet.prefixlen}"},
        }

    def _IpamDriver_ReleasePool(self, doc: dict[str, Any]) -> Decision:
        parse_pool_id(_str(doc, "PoolID"))
        return {}

    def _IpamDriver_RequestAddress(self, doc: dict[str, Any]) -> Decision:
        subnet, iprange = parse_pool_id(_str(doc, "PoolID"))
        options = doc.get("Options") or {}
        if not isinstance(options, dict):
            raise PluginError("Options must be an object")
        if options.get(ADDRESS_TYPE) == GATEWAY_LABEL:
            # Docker wants a gateway; the mesh has none: the network address,
            # as in RequestPool's data, which Docker never routes through.
            return {"Address": f"{subnet.network_address}/{subnet.prefixlen}", "Data": {}}
        text = _str(doc, "Address")
        if not text:
            return Allocate(str(iprange), subnet.prefixlen)
        try:
            addr = ipaddress.IPv4Address(text.split("/")[0])
        except ValueError:
            raise PluginError(f"invalid address {text!r}") from None
        if addr not in subnet:
            raise PluginError(f"{addr} is not in the network's subnet {subnet}")
        return Claim(f"{addr}/{subnet.prefixlen}")

    def _IpamDriver_ReleaseAddress(self, doc: dict[str, Any]) -> Decision:
        subnet, _ = parse_pool_id(_str(doc, "PoolID"))
        try:
            addr = ipaddress.IPv4Address(_str(doc, "Address").split("/")[0])
        except ValueError:
            raise PluginError("ReleaseAddress needs an Address") from None
        if addr == subnet.network_address:
            return {}  # the gateway we made up
        return Release(str(addr))

    # -- the network driver ---------------------------------------------------------

    def _NetworkDriver_GetCapabilities(self, doc: dict[str, Any]) -> Decision:
        return {"Scope": "local", "ConnectivityScope": "global"}

    def _NetworkDriver_CreateNetwork(self, doc: dict[str, Any]) -> Decision:
        data = doc.get("IPv4Data") or []
        if not isinstance(data, list):
            raise PluginError("IPv4Data must be a list")
        for entry in data:
            pool = entry.get("Pool", "") if isinstance(entry, dict) else ""
            try:
                net = ipaddress.IPv4Network(pool)
            except ValueError:
                raise PluginError(f"invalid pool {pool!r}") from None
            if not net.subnet_of(self.range):
                raise PluginError(
                    f"the network's subnet {net} is not in the mesh range {self.range}: "
                    f"create it with --ipam-driver {DRIVER} (addresses from the mesh), "
                    "or --subnet inside the range"
                )
        if doc.get("IPv6Data"):
            raise PluginError("the mesh carries IPv4 only: create the network without --ipv6")
        return {}

    def _NetworkDriver_DeleteNetwork(self, doc: dict[str, Any]) -> Decision:
        return {}

    def _NetworkDriver_CreateEndpoint(self, doc: dict[str, Any]) -> Decision:
        host, peer = veth_names(_id(doc, "EndpointID"))
        iface = doc.get("Interface")
        if isinstance(iface, dict) and _str(iface, "AddressIPv6"):
            raise PluginError("the mesh carries IPv4 only")
        return MakeVeth(host, peer)

    def _NetworkDriver_EndpointOperInfo(self, doc: dict[str, Any]) -> Decision:
        _id(doc, "EndpointID")
        return {"Value": {}}

    def _NetworkDriver_DeleteEndpoint(self, doc: dict[str, Any]) -> Decision:
        return DeleteVeth(veth_names(_id(doc, "EndpointID"))[0])

    def _NetworkDriver_Join(self, doc: dict[str, Any]) -> Decision:
        _, peer = veth_names(_id(doc, "EndpointID"))
        routes = []
        if self.dns_address:  # on-link, as 'mesh attach' routes it: --dns reaches it
            routes.append({"Destination": f"{self.dns_address}/32", "RouteType": ROUTE_CONNECTED})
        return {
            "InterfaceName": {"SrcName": peer, "DstPrefix": CONTAINER_PREFIX},
            "DisableGatewayService": True,
            "StaticRoutes": routes,
        }

    def _NetworkDriver_Leave(self, doc: dict[str, Any]) -> Decision:
        _id(doc, "EndpointID")
        return {}

    def _NetworkDriver_DiscoverNew(self, doc: dict[str, Any]) -> Decision:
        return {}

    def _NetworkDriver_DiscoverDelete(self, doc: dict[str, Any]) -> Decision:
        return {}

    def _NetworkDriver_ProgramExternalConnectivity(self, doc: dict[str, Any]) -> Decision:
        return {}

    def _NetworkDriver_RevokeExternalConnectivity(self, doc: dict[str, Any]) -> Decision:
        return {}

    def _NetworkDriver_AllocateNetwork(self, doc: dict[str, Any]) -> Decision:
        return {"Options": doc.get("Options") or {}}

    def _NetworkDriver_FreeNetwork(self, doc: dict[str, Any]) -> Decision:
        return {}
