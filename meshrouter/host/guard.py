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
each time they change (``Registry`` calls ``apply``), one ``nft -f``; rules
count what they drop (``counts``, shown by ``mesh ps``).  A container that
routes for others (a VPN endpoint, a nested bridge) needs ``--no-guard``
on attach.

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


def chain_name(veth: str) -> str:
    return f"port_{veth}"


def link_local(mac: str) -> ipaddress.IPv6Address:
    """The EUI-64 link-local address of ``mac`` (RFC 4291, appendix A)."""
    b = bytearray(bytes.fromhex(mac.replace(":", "")))
    b[0] ^= 0x02
    iid = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + iid)


def _set(items: list[str]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _nd_target(addr: ipaddress.IPv6Address) -> str:
    """Matches the target of an NS/NA (16 bytes at offset 8 of the ICMPv6 header)."""
    return f"@th,64,128 0x{int(addr):032x}"


def _ipv4_rules(v: str, m: str, ips: list[str]) -> list[str]:
    if not ips:  # IPv6 only: it has no IPv4 to speak
        return [f'iifname "{v}" ether type {{ arp, ip }} counter drop']
    ip = _set(ips)
    return [
        f'iifname "{v}" arp saddr ip != {ip} counter drop',
        f'iifname "{v}" ip saddr != {ip} counter drop',
        f'iifname != "{v}" arp saddr ip {ip} counter drop',
        f'iifname != "{v}" ip saddr {ip} counter drop',
    ]


def _ipv6_rules(v: str, m: str, cidrs6: list[str]) -> list[str]:
    own = [link_local(m), *sorted({ipaddress.IPv6Interface(c).ip for c in cidrs6})]
    na = "icmpv6 type nd-neighbor-advert"
    not_own = " ".join(_nd_target(a).replace(" 0x", " != 0x") for a in own)
    rules = [
        f'iifname "{v}" ip6 saddr != {_set([*map(str, own), "::"])} counter drop',
        f'iifname "{v}" icmpv6 type {{ nd-router-advert, nd-redirect }} counter drop',
        f'iifname "{v}" {na} {not_own} counter drop',
        f'iifname != "{v}" ip6 saddr {_set([str(a) for a in own])} counter drop',
    ]
    rules += [f'iifname != "{v}" {na} {_nd_target(a)} counter drop' for a in own]
    return rules


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
    lines = [*head, f"table bridge {TABLE} {{"]
    for r in sorted(ports, key=lambda r: r.host_veth):
        v, m = r.host_veth, r.mac
        ips = sorted({ipaddress.IPv4Interface(c).ip for c in r.cidrs})
        lines += [
            f"  chain {chain_name(v)} {{",
            f'    iifname "{v}" ether saddr != {m} counter drop',
            f'    iifname "{v}" arp saddr ether != {m} counter drop',
            f'    iifname != "{v}" ether saddr {m} counter drop',
            *(f"    {rule}" for rule in _ipv4_rules(v, m, [str(x) for x in ips])),
            *(f"    {rule}" for rule in _ipv6_rules(v, m, getattr(r, "cidrs6", []))),
            "  }",
        ]
    for hook in ("forward", "input"):
        lines.append(f"  chain {hook} {{ type filter hook {hook} priority -10; policy accept;")
        lines += [f"    jump {chain_name(r.host_veth)}" for r in ports]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def apply(records: Iterable[Guarded]) -> None:
    """Make the table true to ``records``.  Raises NetdevError."""
    nft(render(records))


def remove() -> None:
    delete_table("bridge", TABLE)


def counts() -> dict[str, int]:
    """Packets dropped per host veth (empty when there is no table or no nft)."""
    try:
        proc = subprocess.run(
            ["nft", "-j", "list", "table", "bridge", TABLE],
            capture_output=True,
            text=True,
            check=False,
        )
        doc = json.loads(proc.stdout) if proc.returncode == 0 else {}
    except (OSError, ValueError):
        return {}
    out: dict[str, int] = {}
    for item in doc.get("nftables", []):
        rule = item.get("rule")
        if not rule or not str(rule.get("chain", "")).startswith("port_"):
            continue
        veth = str(rule["chain"])[len("port_") :]
        for expr in rule.get("expr", []):
            if "counter" in expr:
                out[veth] = out.get(veth, 0) + int(expr["counter"].get("packets", 0))
    return out
