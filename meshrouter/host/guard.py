"""No spoofing across the mesh: nftables bridge rules made from this host's attachments.

For each attached container (host veth V, MAC M, addresses I) the table
``bridge meshrouter_guard`` drops, at the host where a frame enters:

* from V: Ethernet frames whose source MAC is not M, ARP whose sender is not
  (M, I), IPv4 whose source is not I — a container speaks only as itself;
* from anywhere but V (another container, or the mesh through the TAP):
  frames with source MAC M, ARP claiming I, IPv4 from I — nobody speaks as
  one of this host's containers.

Every host does the same for its own containers, so a forged frame reaches
no one on any host.  The table is made whole from the attachment records
each time they change (``Registry`` calls ``apply``), one ``nft -f``.  The
rules are fixed (``RULES``); the ports are elements of sets (``SETS``: a
port, its MAC, its addresses, and the pairs of them), so a frame costs a
few hash lookups however many containers the host has, and a port added
is a few set elements, not a chain every frame walks.  What is dropped is
counted against the port it entered by (a named counter per port, shown by
``mesh ps``: ``counts``).  A container that routes for others (a VPN
endpoint, a nested bridge) needs ``--no-guard`` on attach.

IPv6 the same way, with L the container's link-local address (the EUI-64
one of M: attach sets ``addr_gen_mode`` so) and J its IPv6 addresses:

* from V: IPv6 whose source is not J, L or :: (duplicate detection);
  Neighbor Advertisements for a target not in J or L; Router
  Advertisements and Redirects (no container routes for the others, and
  SLAAC does not leak between them);
* from anywhere but V: IPv6 from J or L, Neighbor Advertisements for J or L.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterable
from typing import Protocol

from meshrouter.host.netdev import delete_table, nft

TABLE = "meshrouter_guard"


class Guarded(Protocol):
    host_veth: str
    mac: str
    cidrs: list[str]
    guard: bool


def counter_name(veth: str) -> str:
    return f"spoof_{veth}"


def link_local(mac: str) -> ipaddress.IPv6Address:
    """The EUI-64 link-local address of ``mac`` (RFC 4291, appendix A)."""
    b = bytearray(bytes.fromhex(mac.replace(":", "")))
    b[0] ^= 0x02
    iid = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + iid)


def _nd_target(addr: ipaddress.IPv6Address) -> str:
    """An NS/NA target as the raw 128 bits at offset 8 of the ICMPv6 header
    (this nft has no ``icmpv6 taddr``)."""
    return f"0x{int(addr):032x}"


# Each rule names a frame that is spoofed; ``spoofed`` counts it against the
# port it entered by (when that is a container's) and drops it.  Every match
# is a set lookup: a frame costs the same with one container or a thousand.
RULES = (
    # From a guarded port V: only as itself (its MAC M, addresses I, J, L).
    "iifname @s_guarded iifname . ether saddr != @s_port_mac jump spoofed",
    "iifname @s_guarded iifname . arp saddr ether != @s_port_mac jump spoofed",
    "iifname @s_v6only ether type { arp, ip } jump spoofed",  # it has no IPv4 to speak
    "iifname @s_has4 iifname . arp saddr ip != @s_port_ip4 jump spoofed",
    "iifname @s_has4 iifname . ip saddr != @s_port_ip4 jump spoofed",
    "iifname @s_guarded ip6 saddr != :: iifname . ip6 saddr != @s_port_ip6 jump spoofed",
    "iifname @s_guarded icmpv6 type { nd-router-advert, nd-redirect } jump spoofed",
    "iifname @s_guarded icmpv6 type nd-neighbor-advert"
    " iifname . @th,64,128 != @s_port_na jump spoofed",
    # From anywhere else (another port, the mesh through the TAP): never as one of them.
    "ether saddr @s_mac iifname . ether saddr != @s_port_mac jump spoofed",
    "arp saddr ip @s_ip4 iifname . arp saddr ip != @s_port_ip4 jump spoofed",
    "ip saddr @s_ip4 iifname . ip saddr != @s_port_ip4 jump spoofed",
    "ip6 saddr @s_ip6 iifname . ip6 saddr != @s_port_ip6 jump spoofed",
    "icmpv6 type nd-neighbor-advert @th,64,128 @s_na"
    " iifname . @th,64,128 != @s_port_na jump spoofed",
)

SETS = {
    "s_guarded": "type ifname",
    "s_has4": "type ifname",
    "s_v6only": "type ifname",
    "s_port_mac": "type ifname . ether_addr",
    "s_mac": "type ether_addr",
    "s_port_ip4": "type ifname . ipv4_addr",
    "s_ip4": "type ipv4_addr",
    "s_port_ip6": "type ifname . ipv6_addr",
    "s_ip6": "type ipv6_addr",
    "s_port_na": "typeof iifname . @th,64,128",
    "s_na": "typeof @th,64,128",
}


def render(records: Iterable[Guarded]) -> str:
    """The nft script that makes the table for these attachments (or deletes it)."""
    ports = [
        r
        for r in records
        if r.guard and r.mac and (r.cidrs or getattr(r, "cidrs6", [])) and r.host_veth
    ]
    head = [f"table bridge {TABLE}", f"delete table bridge {TABLE}"]
    if not ports:
        return "\n".join(head) + "\n"
    elements: dict[str, list[str]] = {name: [] for name in SETS}
    counters: list[str] = []
    for r in sorted(ports, key=lambda r: r.host_veth):
        v, m = f'"{r.host_veth}"', r.mac
        ips = sorted({ipaddress.IPv4Interface(c).ip for c in r.cidrs})
        own6 = [
            link_local(m),
            *sorted({ipaddress.IPv6Interface(c).ip for c in getattr(r, "cidrs6", [])}),
        ]
        elements["s_guarded"].append(v)
        elements["s_has4" if ips else "s_v6only"].append(v)
        elements["s_port_mac"].append(f"{v} . {m}")
        elements["s_mac"].append(m)
        elements["s_port_ip4"] += [f"{v} . {ip}" for ip in ips]
        elements["s_ip4"] += [str(ip) for ip in ips]
        elements["s_port_ip6"] += [f"{v} . {a}" for a in own6]
        elements["s_ip6"] += [str(a) for a in own6]
        elements["s_port_na"] += [f"{v} . {_nd_target(a)}" for a in own6]
        elements["s_na"] += [_nd_target(a) for a in own6]
        counters.append(f"{v} : {counter_name(r.host_veth)}")
    lines = [*head, f"table bridge {TABLE} {{"]
    lines += [f"  counter {counter_name(r.host_veth)} {{ }}" for r in ports]
    lines.append(
        "  map port_counter { type ifname : counter; elements = { " + ", ".join(counters) + " }; }"
    )
    for name, kind in SETS.items():
        items = sorted(set(elements[name]))
        body = f"; elements = {{ {', '.join(items)} }}" if items else ""
        lines.append(f"  set {name} {{ {kind}{body}; }}")
    lines += [
        "  chain spoofed {",
        "    counter name iifname map @port_counter",  # a port's own frame: its count
        "    counter drop",
        "  }",
        "  chain guard {",
        *(f"    {rule}" for rule in RULES),
        "  }",
    ]
    for hook in ("forward", "input"):
        lines.append(
            f"  chain {hook} {{ type filter hook {hook} priority -10; policy accept; jump guard; }}"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def apply(records: Iterable[Guarded]) -> None:
    """Make the table true to ``records``.  Raises NetdevError."""
    nft(render(records))


def remove() -> None:
    delete_table("bridge", TABLE)


def counts() -> dict[str, int]:
    """Spoofed frames dropped per host veth they entered by (empty when
    there is no table or no nft)."""
    try:
        proc = subprocess.run(
            ["nft", "-j", "list", "counters", "table", "bridge", TABLE],
            capture_output=True,
            text=True,
            check=False,
        )
        doc = json.loads(proc.stdout) if proc.returncode == 0 else {}
    except (OSError, ValueError):
        return {}
    out: dict[str, int] = {}
    for item in doc.get("nftables", []):
        c = item.get("counter")
        if isinstance(c, dict) and str(c.get("name", "")).startswith("spoof_"):
            out[str(c["name"])[len("spoof_") :]] = int(c.get("packets", 0))
    return out
