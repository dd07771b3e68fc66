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
on attach.  IPv6 is covered by the MAC rule only.
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


def render(records: Iterable[Guarded]) -> str:
    """The nft script that makes the table for these attachments (or deletes it)."""
    ports = [r for r in records if r.guard and r.mac and r.cidrs and r.host_veth]
    head = [f"table bridge {TABLE}", f"delete table bridge {TABLE}"]
    if not ports:
        return "\n".join(head) + "\n"
    lines = [*head, f"table bridge {TABLE} {{"]
    for r in sorted(ports, key=lambda r: r.host_veth):
        v, m = r.host_veth, r.mac
        ips = sorted({ipaddress.IPv4Interface(c).ip for c in r.cidrs})
        ip = str(ips[0]) if len(ips) == 1 else "{ " + ", ".join(map(str, ips)) + " }"
        lines += [
            f"  chain {chain_name(v)} {{",
            f'    iifname "{v}" ether saddr != {m} counter drop',
            f'    iifname "{v}" arp saddr ether != {m} counter drop',
            f'    iifname "{v}" arp saddr ip != {ip} counter drop',
            f'    iifname "{v}" ip saddr != {ip} counter drop',
            f'    iifname != "{v}" ether saddr {m} counter drop',
            f'    iifname != "{v}" arp saddr ip {ip} counter drop',
            f'    iifname != "{v}" ip saddr {ip} counter drop',
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
