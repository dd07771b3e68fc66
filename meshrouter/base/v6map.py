"""Containers' IPv6 addresses follow their IPv4 ones (``--ipalloc-range6``).

With an IPv6 range R6 beside the IPv4 range R4, the address at offset k of R4
has the IPv6 address at offset k of R6, and a prefix n bits longer than R4's
is n bits longer than R6's::

    R4 = 10.32.0.0/12, R6 = fd32::/64
    10.32.0.5/12   ->  fd32::5/64
    10.40.1.7/24   ->  fd32::8:107/76      (a net: subnet maps to a subnet)

So the one IPv4 ring (its CRDT, its claims, its restart and reclaim rules)
decides both families: two containers never share an IPv6 address of the
range because they never share an IPv4 one, and nothing new crosses the
wire.  Every peer must be launched with the same R6 (as with R4).

Plain functions on ``ipaddress`` values, no I/O.  ``Range6Error`` is the
one error an operator's text can raise here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# The DNS server's IPv6 address on every host's bridge: link-local, as the
# IPv4 one is (169.254.53.53), so it needs no route either way and never
# leaves the host; containers name it with their interface (fe80::53%ethwe).
DNS_ADDRESS6 = "fe80::53"


class Range6Error(ValueError):
    """A one-line reason an IPv6 range or address was refused."""


@dataclass(frozen=True)
class Range6:
    """The pair of ranges whose addresses map one to one."""

    v4: ipaddress.IPv4Network
    v6: ipaddress.IPv6Network

    @property
    def shift(self) -> int:
        """How much longer an IPv6 prefix is than the IPv4 one it maps."""
        return self.v6.prefixlen - self.v4.prefixlen

    def image(self, iface: ipaddress.IPv4Interface) -> ipaddress.IPv6Interface | None:
        """The IPv6 address of ``iface`` (None: it is outside the IPv4 range,
        or its prefix is shorter than the range's)."""
        if iface.ip not in self.v4 or iface.network.prefixlen < self.v4.prefixlen:
            return None
        offset = int(iface.ip) - int(self.v4.network_address)
        addr = ipaddress.IPv6Address(int(self.v6.network_address) + offset)
        return ipaddress.IPv6Interface(f"{addr}/{iface.network.prefixlen + self.shift}")

    def origin(self, addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
        """The IPv4 address whose image ``addr`` is (None: no address of the
        IPv4 range maps to it)."""
        if addr not in self.v6:
            return None
        offset = int(addr) - int(self.v6.network_address)
        if offset >= self.v4.num_addresses:
            return None
        return ipaddress.IPv4Address(int(self.v4.network_address) + offset)


def parse_range6(text: str, v4_range: str) -> Range6 | None:
    """The operator's ``--ipalloc-range6`` ("" or "off": none).  Raises Range6Error."""
    text = text.strip()
    if text in ("", "off", "none"):
        return None
    try:
        v4 = ipaddress.IPv4Network(v4_range)
    except ValueError as exc:
        raise Range6Error(f"--ipalloc-range {v4_range!r}: {exc}") from None
    try:
        net = ipaddress.ip_network(text)
    except ValueError as exc:
        raise Range6Error(
            f"--ipalloc-range6 {text!r} is not an IPv6 network like fd32::/64 ({exc})"
        ) from None
    if not isinstance(net, ipaddress.IPv6Network):
        raise Range6Error(f"--ipalloc-range6 {net} is IPv4: give an IPv6 prefix like fd32::/64")
    room = 32 - v4.prefixlen
    if 128 - net.prefixlen < room:
        raise Range6Error(
            f"--ipalloc-range6 {net} has room for {128 - net.prefixlen} host bits but "
            f"--ipalloc-range {v4} needs {room}: use /{128 - room} or shorter"
        )
    if net.is_multicast or net.is_link_local or net.is_loopback:
        raise Range6Error(
            f"--ipalloc-range6 {net} is not unicast: use a ULA (fd00::/8) or global prefix"
        )
    return Range6(v4, net)


def parse_address6(text: str) -> ipaddress.IPv6Interface:
    """An operator's IPv6 address with prefix (``fd32::5/64``; without one,
    /64).  Raises Range6Error."""
    try:
        iface = ipaddress.IPv6Interface(text if "/" in text else f"{text}/64")
    except ValueError:
        raise Range6Error(
            f"invalid address {text!r}: expected an IPv6 address with prefix, like fd32::5/64"
        ) from None
    ip = iface.ip
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local:
        raise Range6Error(
            f"{ip} cannot be a container's address: give a unicast one (a ULA or global)"
        )
    return iface
