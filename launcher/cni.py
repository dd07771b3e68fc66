"""``mesh-cni``: the mesh as a CNI plugin (the CNI specification 1.0.0, and 1.1's
STATUS and GC).

A runtime (podman, containerd, CRI-O, Kubernetes' kubelet through them) runs
it with the network configuration on stdin and ``CNI_COMMAND``,
``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS`` in the
environment.  ``ADD`` does what ``mesh attach`` does (a veth from the
container to the mesh bridge, an address from the mesh's IPAM, the record in
``attachments.json``, the name in DNS), so ``mesh ps``, ``mesh detach`` and
the release of a removed container's address work the same.

The network configuration's own keys (all optional)::

    {"cniVersion": "1.0.0", "name": "mesh", "type": "mesh-cni",
     "stateDir": "/var/lib/meshrouter",   # where the router's socket is
     "defaultRoute": true,                # route 0.0.0.0/0 via the host (it is exposed)
     "meshDns": true}                     # name the container, give resolvers in the result

An address is taken from ``runtimeConfig.ips`` (capability "ips"), from
``CNI_ARGS`` ``IP=``, or else allocated.  Errors are the specification's JSON
on stdout with its codes (4 bad environment, 6 undecodable configuration, 7
invalid configuration, 11 try again later: the router is not running, 50 the
plugin is not available (STATUS)), and exit status 1.  ``DEL`` never fails
for what is already gone, also when the router is down (the router reclaims
the address when it sees the namespace gone).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from meshrouter.attachments import attach as attach_mod
from meshrouter.base import v6map
from meshrouter.base.errors import BadInput
from meshrouter.base.inputs import json_untrusted
from meshrouter.contract import apiclient
from meshrouter.contract import requests as rq
from meshrouter.contract.state import BASE_STATE_DIR
from meshrouter.contract.status import DnsStatus
from meshrouter.engines.containers import Container
from meshrouter.host.netdev import NetdevError, ip, link_exists
from meshrouter.host.netns import has_link

SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
CODE_VERSION, CODE_FIELD, CODE_UNKNOWN_CONTAINER = 1, 2, 3
CODE_ENV, CODE_IO, CODE_DECODE, CODE_CONFIG = 4, 5, 6, 7
CODE_TRY_LATER, CODE_UNAVAILABLE = 11, 50
CODE_ATTACH = 100  # this plugin's own: attaching failed (the message says why)
CODE_INTERNAL = 999  # the specification's "unknown error": a bug of ours, never a traceback
MAX_CONFIG = 1 << 20

R = TypeVar("R")


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def parse_config(data: str | bytes) -> dict[str, Any]:
    try:
        conf = json_untrusted(data, what="network configuration", max_bytes=MAX_CONFIG)
    except BadInput as exc:
        raise CniError(CODE_DECODE, "the network configuration is not JSON", str(exc)) from None
    if not isinstance(conf, dict):
        raise CniError(CODE_DECODE, "the network configuration must be a JSON object")
    version = conf.get("cniVersion")
    if not isinstance(version, str) or version not in SUPPORTED:
        raise CniError(
            CODE_VERSION,
            f"unsupported cniVersion {version!r}",
            f"supported: {', '.join(SUPPORTED)}",
        )
    for key, kind in (("stateDir", str), ("defaultRoute", bool), ("meshDns", bool), ("name", str)):
        if key in conf and not isinstance(conf[key], kind):
            raise CniError(CODE_CONFIG, f'"{key}" must be a {kind.__name__}')
    if not conf.get("name"):
        raise CniError(CODE_CONFIG, 'the network configuration needs a "name"')
    return conf


def parse_args(text: str) -> dict[str, str]:
    """``CNI_ARGS``: ``K=V;K=V``."""
    out = {}
    for item in text.split(";"):
        if "=" in item:
            k, v = item.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def version_result(conf_version: str = "1.1.0") -> dict[str, Any]:
    return {"cniVersion": conf_version, "supportedVersions": SUPPORTED}


def for_version(result: dict[str, Any], version: str) -> dict[str, Any]:
    """A 1.0.0-shaped result in the shape of ``version`` (0.3.x/0.4.0 mark IPs with "version")."""
    out = dict(result, cniVersion=version)
    if _version_tuple(version) < (1, 0, 0):
        out["ips"] = [dict(i, version="4") for i in result.get("ips", [])]
    return out


class Plugin:
    """One invocation: the environment, the configuration, the router."""

    def __init__(self, env: Mapping[str, str], stdin: str | bytes) -> None:
        self.env = env
        self.command = env.get("CNI_COMMAND", "")
        if self.command == "VERSION":
            self.conf: dict[str, Any] = {}
            return
        self.conf = parse_config(stdin)
        self.version: str = self.conf["cniVersion"]
        self.state_dir = Path(self.conf.get("stateDir") or BASE_STATE_DIR)
        self.network: str = self.conf["name"]

    def _need(self, *names: str) -> list[str]:
        values = [self.env.get(n, "") for n in names]
        missing = [n for n, v in zip(names, values, strict=True) if not v]
        if missing:
            raise CniError(CODE_ENV, f"missing environment variable(s): {', '.join(missing)}")
        return values

    def _ask(self, request: rq.Request[R]) -> R:
        try:
            return apiclient.ask(self.state_dir, request)
        except apiclient.RouterDown:
            raise CniError(
                CODE_TRY_LATER,
                f"the mesh router is not running (state dir {self.state_dir})",
                "start it with 'mesh launch' (or the DaemonSet) and retry",
            ) from None
        except apiclient.ApiError as exc:
            raise CniError(CODE_ATTACH, str(exc)) from None

    def ident(self, container_id: str, ifname: str) -> str:
        return f"cni:{self.network}:{container_id}:{ifname}"

    # -- commands ---------------------------------------------------------------------

    def run(self) -> dict[str, Any] | None:
        if self.command == "VERSION":
            return version_result()
        handlers = {
            "ADD": self.add,
            "DEL": self.delete,
            "CHECK": self.check,
            "STATUS": self.status,
            "GC": self.gc,
        }
        handler = handlers.get(self.command)
        if handler is None:
            raise CniError(CODE_ENV, f"unknown CNI_COMMAND {self.command!r}")
        return handler()

    def add(self) -> dict[str, Any]:
        cid, netns, ifname = self._need("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
        if not os.path.exists(netns):
            raise CniError(CODE_UNKNOWN_CONTAINER, f"network namespace {netns} does not exist")
        args = parse_args(self.env.get("CNI_ARGS", ""))
        st = self._ask(rq.Status())
        pod = args.get("K8S_POD_NAME", "")
        where = args.get("K8S_POD_NAMESPACE", "")
        display = f"{where}/{pod}" if where and pod else pod or cid[:12]
        c = Container(display, "cni", netns, netns, self.ident(cid, ifname), pod)
        range6 = str(st.get("ipalloc_range6") or "")
        wants = [attach_mod.Want(cidr=x) for x in self._requested_addresses(args)]
        wants += self._ranges(range6) if not wants else []
        routes: list[str] = []
        gateway = gateway6 = None
        if self.conf.get("defaultRoute", True):
            exposed = [
                x.split("/")[0].strip()
                for x in str(self._ask(rq.Expose(masquerade=True))).split(",")
            ]
            gateway = next((x for x in exposed if ":" not in x), None)
            gateway6 = next((x for x in exposed if ":" in x), None) if range6 else None
            # onlink: a pod of a subnet (ranges) reaches the host all the same, on the bridge
            routes += [f"default via {gw} dev {ifname} onlink" for gw in (gateway, gateway6) if gw]
        dns = st["dns"] if st["dns"]["enabled"] and self.conf.get("meshDns", True) else None
        registry = attach_mod.Registry(self.state_dir)
        try:
            rec, _ = attach_mod.attach(
                registry,
                display,
                wants or [attach_mod.Want()],
                bridge=st["bridge"],
                mesh_range=st["ipalloc_range"],
                mtu=int(st["mtu"]),
                ipam=attach_mod.RouterIpam(self.state_dir),
                dns_address=dns["address"] if dns else None,
                container=c,
                ifname=ifname,
                routes=tuple(routes),
                range6=range6,
            )
        except attach_mod.AttachError as exc:
            raise CniError(CODE_ATTACH, str(exc)) from None
        if dns and pod:
            self._ask(rq.DnsAdd(rec.ident, [pod], rec.cidrs))
        result = self._result(rec, netns, (gateway, gateway6), dns)
        return for_version(_chain(self.conf.get("prevResult"), result), self.version)

    def _requested_addresses(self, args: dict[str, str]) -> list[str]:
        """``runtimeConfig.ips`` (podman's --ip, each of them), else ``CNI_ARGS IP=``
        (comma-separated); empty: IPAM allocates one."""
        rc = self.conf.get("runtimeConfig") or {}
        ips = rc.get("ips") if isinstance(rc, dict) else None
        if isinstance(ips, list) and ips:
            return [x for x in ips if isinstance(x, str)]
        return [x for x in args.get("IP", "").split(",") if x]

    def _ranges(self, range6: str) -> list[attach_mod.Want]:
        """host-local's ``ranges`` (in ``ipam`` or at the top): one address
        from the first range of each set.  An IPv4 range is a subnet of the
        mesh range IPAM allocates in; an IPv6 one must lie in the mesh's
        IPv6 range, where the address is the image of the IPv4 one."""
        conf = self.conf.get("ipam") if isinstance(self.conf.get("ipam"), dict) else self.conf
        sets = conf.get("ranges") if isinstance(conf, dict) else None
        if sets is None:
            return []
        if not isinstance(sets, list) or not all(isinstance(x, list) and x for x in sets):
            raise CniError(CODE_CONFIG, 'ranges: expected a list of lists of {"subnet": CIDR}')
        wants: list[attach_mod.Want] = []
        for one in sets:
            first = one[0]
            subnet = first.get("subnet") if isinstance(first, dict) else None
            try:
                net = ipaddress.ip_network(str(subnet))
            except ValueError:
                raise CniError(CODE_CONFIG, f"ranges: {subnet!r} is not a subnet") from None
            if net.version == 4:
                wants.append(attach_mod.Want(subnet=str(net)))
            elif not range6 or not net.subnet_of(ipaddress.IPv6Network(range6)):
                raise CniError(
                    CODE_CONFIG,
                    f"ranges: {net} is not inside the mesh's IPv6 range "
                    f"({range6 or 'none: mesh launch --ipalloc-range6'}); a pod's IPv6 "
                    "address is the image of its IPv4 one there",
                )
        return wants or [attach_mod.Want()]

    def _result(
        self,
        rec: attach_mod.Attachment,
        netns: str,
        gateways: tuple[str | None, str | None],
        dns: DnsStatus | None,
    ) -> dict[str, Any]:
        gateway, gateway6 = gateways
        host_mac = ""
        if link_exists(rec.host_veth):
            out = ip("-o", "link", "show", "dev", rec.host_veth, check=False).stdout
            parts = out.split("link/ether ")
            host_mac = parts[1].split()[0] if len(parts) > 1 else ""
        addrs: list[dict[str, Any]] = []
        for cidr in rec.addresses:
            addr: dict[str, Any] = {"address": cidr, "interface": 1}
            gw = gateway6 if ":" in cidr else gateway
            if gw:
                addr["gateway"] = gw
            addrs.append(addr)
        result: dict[str, Any] = {
            "cniVersion": self.version,
            "interfaces": [
                {"name": rec.host_veth, "mac": host_mac},
                {"name": rec.ifname, "mac": rec.mac, "sandbox": netns},
            ],
            "ips": addrs,
            "routes": [{"dst": "0.0.0.0/0", "gw": gateway}] if gateway else [],
            "dns": {},
        }
        if gateway6 and rec.cidrs6:
            result["routes"].append({"dst": "::/0", "gw": gateway6})
        if dns:
            servers = [dns["address"]]
            if rec.cidrs6:
                servers.append(f"{v6map.DNS_ADDRESS6}%{rec.ifname}")
            result["dns"] = {
                "nameservers": servers,
                "domain": dns["domain"].rstrip("."),
                "search": [dns["domain"].rstrip(".")],
            }
        return result

    def delete(self) -> None:
        cid, ifname = self._need("CNI_CONTAINERID", "CNI_IFNAME")
        netns = self.env.get("CNI_NETNS", "")
        ident = self.ident(cid, ifname)
        registry = attach_mod.Registry(self.state_dir)
        with registry.locked() as records:
            rec = records.pop(ident, None)
        if rec is not None:
            ip("link", "del", "dev", rec.host_veth, check=False)
        elif netns and os.path.exists(netns) and has_link(ifname, netns):
            attach_mod.in_ns(
                attach_mod.Attachment("", "cni", ident, netns, "", [], ""),
                "ip",
                "link",
                "del",
                "dev",
                ifname,
                check=False,
            )
        # When the router is down it reclaims the address once the namespace is gone.
        with contextlib.suppress(CniError):
            self._ask(rq.Release(ident))
        return None

    def check(self) -> None:
        cid, netns, ifname = self._need("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
        rec = attach_mod.Registry(self.state_dir).read().get(self.ident(cid, ifname))
        if rec is None:
            raise CniError(CODE_ATTACH, f"container {cid[:12]} is not attached to {self.network}")
        if not link_exists(rec.host_veth) or not has_link(ifname, netns):
            raise CniError(CODE_ATTACH, f"the link of {cid[:12]} ({ifname}) is gone")
        return None

    def status(self) -> None:
        try:
            self._ask(rq.Status())
        except CniError as exc:
            raise CniError(CODE_UNAVAILABLE, exc.msg, exc.details) from None
        return None

    def gc(self) -> None:
        """Release attachments of this network that the runtime no longer knows."""
        valid = self.conf.get("cni.dev/valid-attachments") or []
        keep = {
            self.ident(str(v.get("containerID")), str(v.get("ifname")))
            for v in valid
            if isinstance(v, dict)
        }
        prefix = f"cni:{self.network}:"
        registry = attach_mod.Registry(self.state_dir)
        with registry.locked() as records:
            stale = [r for k, r in records.items() if k.startswith(prefix) and k not in keep]
            for r in stale:
                del records[r.ident]
        for r in stale:
            ip("link", "del", "dev", r.host_veth, check=False)
            with contextlib.suppress(CniError):
                self._ask(rq.Release(r.ident))
        return None


def _chain(prev: Any, ours: dict[str, Any]) -> dict[str, Any]:
    """Our result after a previous plugin's: its interfaces, addresses and
    routes first, ours appended (interface indices shifted)."""
    if not isinstance(prev, dict):
        return ours
    shift = len(prev.get("interfaces") or [])
    out = dict(prev)
    out["interfaces"] = list(prev.get("interfaces") or []) + ours["interfaces"]
    out["ips"] = list(prev.get("ips") or []) + [
        dict(i, interface=i["interface"] + shift) for i in ours["ips"]
    ]
    out["routes"] = list(prev.get("routes") or []) + ours["routes"]
    out["dns"] = prev.get("dns") or ours["dns"]
    return out


def main(env: Mapping[str, str] | None = None, stdin: str | bytes | None = None) -> int:
    env = os.environ if env is None else env
    version = "1.0.0"
    try:
        data = sys.stdin.buffer.read(MAX_CONFIG + 1) if stdin is None else stdin
        plugin = Plugin(env, data)
        version = getattr(plugin, "version", version)
        result = plugin.run()
    except CniError as exc:
        err = {"cniVersion": version, "code": exc.code, "msg": exc.msg}
        if exc.details:
            err["details"] = exc.details
        print(json.dumps(err))
        return 1
    except (NetdevError, OSError) as exc:
        print(json.dumps({"cniVersion": version, "code": CODE_IO, "msg": str(exc)}))
        return 1
    except Exception as exc:  # never a traceback: the runtime reads JSON
        msg = f"internal error ({type(exc).__name__}: {exc})"[:500]
        print(json.dumps({"cniVersion": version, "code": CODE_INTERNAL, "msg": msg}))
        return 1
    except KeyboardInterrupt:
        print(json.dumps({"cniVersion": version, "code": CODE_INTERNAL, "msg": "interrupted"}))
        return 1
    if result is not None:
        print(json.dumps(result))
    return 0


def run() -> None:
    """The ``mesh-cni`` program."""
    raise SystemExit(main())


if __name__ == "__main__":
    run()
