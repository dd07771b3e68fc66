"""What the router changes on its host beside the bridge and the TAP: the DNS
server's address and the nftables tables that keep it per host, and what
``mesh expose`` makes (an address on the bridge, masquerading out of the mesh).

Every table here is the mesh's own, made whole with one ``nft -f`` and
deleted whole, so nothing of the operator's rules is touched.  These run
rarely (start, stop, expose, hide): plain ``ip`` and ``nft`` processes.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from meshrouter.host.netdev import NetdevError, delete_table, ip, nft

log = logging.getLogger("meshrouter")

DNS_TABLE = "meshrouter_dns"  # bridge family: the DNS address stays off the mesh
NAT_TABLE = "meshrouter_nat"  # ip family: masquerading for exposed hosts
NAT6_TABLE = "meshrouter_nat6"  # ip6 family: the same for the IPv6 range


def has_address(dev: str, addr: str) -> bool:
    family = "-6" if ":" in addr else "-4"
    out = ip("-o", family, "addr", "show", "dev", dev, check=False).stdout
    return any(f" {addr}/" in line for line in out.splitlines())


def add_address(dev: str, cidr: str, *, scope: str = "global") -> bool:
    """Put ``cidr`` (either family) on ``dev``; False if it was there already."""
    iface = ipaddress.ip_interface(cidr)
    if has_address(dev, str(iface.ip)):
        return False
    extra = ["nodad"] if iface.version == 6 else []  # the mesh made it unique
    ip("addr", "add", str(iface), "dev", dev, "scope", scope, *extra)
    return True


def del_address(dev: str, cidr: str) -> None:
    ip("addr", "del", str(ipaddress.ip_interface(cidr)), "dev", dev, check=False)


def dns_up(bridge: str, tap: str, addr: str, addr6: str | None = None) -> None:
    """The DNS address on the bridge, and kept off the mesh: every host has the
    same one, so ARP for it and packets to or from it must not cross the TAP
    (a container would otherwise be answered by another host's router).  With
    ``addr6``, the IPv6 one too, and Neighbor Discovery for it kept here (a
    bridge without IPv6 gets the IPv4 address alone, with a warning)."""
    add_address(bridge, f"{addr}/32", scope="link")
    rules = [
        f'oifname "{tap}" arp daddr ip {addr} drop',
        f'iifname "{tap}" arp saddr ip {addr} drop',
        f'oifname "{tap}" ip daddr {addr} drop',
        f'iifname "{tap}" ip saddr {addr} drop',
    ]
    output = [
        f'oifname "{tap}" arp saddr ip {addr} drop',
        f'oifname "{tap}" ip saddr {addr} drop',
    ]
    if addr6 is not None and _add_address6(bridge, addr6):
        target = nd_target_match(addr6)
        nd = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }"
        rules += [
            f'oifname "{tap}" ip6 daddr {addr6} drop',
            f'iifname "{tap}" ip6 saddr {addr6} drop',
            f'oifname "{tap}" {nd} {target} drop',
            f'iifname "{tap}" {nd} {target} drop',
        ]
        output += [
            f'oifname "{tap}" ip6 saddr {addr6} drop',
            f'oifname "{tap}" {nd} {target} drop',
        ]
    chains = {
        "forward": rules,
        "output": output,
        "input": [
            f'iifname "{tap}" arp saddr ip {addr} drop',
            f'iifname "{tap}" arp daddr ip {addr} drop',
        ],
    }
    script = [
        f"table bridge {DNS_TABLE}",
        f"delete table bridge {DNS_TABLE}",
        f"table bridge {DNS_TABLE} {{",
    ]
    for hook, body in chains.items():
        script.append(f"  chain {hook} {{ type filter hook {hook} priority 0; policy accept;")
        script += [f"    {r}" for r in body]
        script.append("  }")
    script.append("}")
    nft("\n".join(script) + "\n")


def nd_target_match(addr6: str) -> str:
    """An nft match on the target address of a Neighbor Solicitation or
    Advertisement (16 bytes, 8 bytes into the ICMPv6 header)."""
    value = int(ipaddress.IPv6Address(addr6))
    return f"@th,64,128 0x{value:032x}"


def _add_address6(dev: str, addr6: str) -> bool:
    """``addr6``/128 on ``dev`` (``add_address``: no duplicate detection);
    False, logged, when the device has no IPv6."""
    try:
        add_address(dev, f"{addr6}/128", scope="link")
    except NetdevError as exc:
        log.warning("no IPv6 DNS address on %s: %s", dev, exc)
        return False
    return True


def dns_down(bridge: str, addr: str, addr6: str | None = None) -> None:
    delete_table("bridge", DNS_TABLE)
    del_address(bridge, f"{addr}/32")
    if addr6 is not None:
        ip("addr", "del", f"{addr6}/128", "dev", bridge, check=False)


def _forwarding(path: str, sysctl: str) -> None:
    forward = Path(path)
    try:
        if forward.read_text().strip() != "1":
            forward.write_text("1")
    except OSError as exc:  # a router container without write access to /proc/sys
        raise NetdevError(
            f"cannot turn on forwarding ({exc.strerror}): run 'sysctl -w {sysctl}=1' on the host"
        ) from None


def masquerade_up(mesh_range: str, bridge: str, range6: str | None = None) -> None:
    """Containers reach what is outside the mesh through this host: their packets
    leaving by another interface get the host's address.  Forwarding is turned on.
    With ``range6``, the same for their IPv6 addresses (NAT66: a ULA range
    reaches the IPv6 internet through the host's address, as Docker does)."""
    _forwarding("/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward")
    if range6:
        _forwarding("/proc/sys/net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding")
        nft(
            f"table ip6 {NAT6_TABLE}\n"
            f"delete table ip6 {NAT6_TABLE}\n"
            f"table ip6 {NAT6_TABLE} {{\n"
            "  chain postrouting { type nat hook postrouting priority srcnat; policy accept;\n"
            f'    ip6 saddr {range6} ip6 daddr != {range6} oifname != "{bridge}" masquerade\n'
            "  }\n"
            "}\n"
        )
    script = (
        f"table ip {NAT_TABLE}\n"
        f"delete table ip {NAT_TABLE}\n"
        f"table ip {NAT_TABLE} {{\n"
        "  chain postrouting { type nat hook postrouting priority srcnat; policy accept;\n"
        f'    ip saddr {mesh_range} ip daddr != {mesh_range} oifname != "{bridge}" masquerade\n'
        "  }\n"
        "}\n"
    )
    nft(script)


def masquerade_down() -> None:
    delete_table("ip", NAT_TABLE)
    delete_table("ip6", NAT6_TABLE)
