"""Host network devices: ``ip``/``bridge``/``nft`` runs, the bridge, links (the TAP is
``dataplane.tap``: this module loads no pytun, for the client)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Collection
from pathlib import Path

from meshrouter.base.errors import MeshError
from meshrouter.contract.state import take_bridge_made


class NetdevError(MeshError):
    pass


def _tool(tool: str, args: tuple[str, ...], check: bool) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([tool, *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        msg = proc.stderr.strip() or proc.stdout.strip()
        raise NetdevError(f"'{tool} {' '.join(args)}' failed: {msg}")
    return proc


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _tool("ip", args, check)


def veth_args(host: str, peer: str, mtu: int | None = None, netns: str | None = None) -> list[str]:
    """``ip`` arguments for a veth pair ``host``/``peer`` (the peer end in
    ``netns``, a name or /proc path, when given): the one way this project
    makes a veth, for containers, the Docker driver, the lab and the bench."""
    size = ["mtu", str(mtu)] if mtu is not None else []
    where = ["netns", netns] if netns is not None else []
    return ["link", "add", "name", host, *size, "type", "veth", "peer", "name", peer, *size, *where]


def make_veth(host: str, peer: str, mtu: int | None = None, netns: str | None = None) -> None:
    """Make the veth pair (see ``veth_args``).  Raises NetdevError."""
    ip(*veth_args(host, peer, mtu, netns))


def bridge(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """iproute2's ``bridge`` (port flags such as ``isolated``)."""
    return _tool("bridge", args, check)


def nft(script: str) -> None:
    """Run an nft script (``nft -f -``).  Raises NetdevError with nft's complaint."""
    if shutil.which("nft") is None:
        raise NetdevError("nft (nftables) is not installed: apt-get install nftables")
    proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NetdevError(f"nft failed: {proc.stderr.strip().splitlines()[-1:]}")


def delete_table(family: str, name: str) -> None:
    if shutil.which("nft") is not None:
        subprocess.run(["nft", "delete", "table", family, name], capture_output=True, check=False)


def link_exists(name: str) -> bool:
    """Whether interface ``name`` exists in this thread's network namespace."""
    try:
        socket.if_nametoindex(name)
    except OSError:  # no such device, or a name no interface can have
        return False
    return True


def ensure_bridge(name: str, mtu: int) -> bool:
    """Create bridge ``name`` if it is missing; return True if we made it."""
    made = False
    if not link_exists(name):
        ip("link", "add", "name", name, "type", "bridge")
        made = True
    ip("link", "set", "dev", name, "mtu", str(mtu), "up")
    return made


def delete_link(name: str) -> bool:
    return ip("link", "del", "dev", name, check=False).returncode == 0


def delete_bridge_made(state_dir: Path, bridge: str) -> bool:
    """Remove ``bridge`` if the router made it (``state.take_bridge_made``,
    which forgets that it did); whether it went."""
    return take_bridge_made(state_dir, bridge) and delete_link(bridge)


def global_addresses(skip: Collection[str] = ()) -> list[str]:
    """This namespace's global unicast addresses of both families, on
    interfaces not in ``skip`` (tentative, failed and temporary IPv6 ones
    left out): what a peer may reach us at.  Empty when ``ip`` fails."""
    out = ip("-j", "addr", "show", "scope", "global", check=False).stdout
    try:
        links = json.loads(out) if out.strip() else []
    except ValueError:
        return []
    found: list[str] = []
    for link in links if isinstance(links, list) else []:
        if not isinstance(link, dict) or link.get("ifname") in skip:
            continue
        for a in link.get("addr_info") or []:
            if not isinstance(a, dict) or a.get("family") not in ("inet", "inet6"):
                continue
            if any(a.get(k) for k in ("tentative", "dadfailed", "temporary", "deprecated")):
                continue
            local = a.get("local")
            if isinstance(local, str) and local:
                found.append(local)
    return found
