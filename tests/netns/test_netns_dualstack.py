"""Dual-stack containers (issue 24, parts 2 to 4): IPv6 addresses beside
IPv4 from ``--ipalloc-range6``, names with A and AAAA, and the guard
against forged IPv6 and Neighbor Discovery.  Real routers in namespaces,
real ping, TCP, getent and dig, and scapy forging as a container."""

from __future__ import annotations

import ipaddress
import sys
import time
from collections.abc import Callable

import pytest

from meshrouter.testing.netlab import Lab, listening, star, status, tcp_transfer

pytestmark = pytest.mark.netns

LabFactory = Callable[..., Lab]
RANGE6 = ("--ipalloc-range6", "fd32::/64")


def attach(lab: Lab, i: int, *args: str) -> tuple[str, str]:
    """(IPv4, IPv6) of a container attached with ``args``."""
    v4, v6 = lab.mesh(i, "attach", *args).stdout.split()
    return v4.split("/")[0], v6.split("/")[0]


def dig(lab: Lab, ns: str, *args: str) -> list[str]:
    out = lab.in_ns(ns, "dig", "+short", "+time=2", "+tries=1", *args, check=False).stdout
    return sorted(ln for ln in out.splitlines() if ln and not ln.startswith(";"))


def test_dual_stack_containers_on_three_hosts(lab_factory: LabFactory) -> None:
    lab = lab_factory(3)
    star(lab, 3, *RANGE6)
    web, c2, c3 = lab.container("web"), lab.container("c2"), lab.container("c3")
    web4, web6 = attach(lab, 1, web)
    # The image of the IPv4 address: the same offset in the IPv6 range.
    assert ipaddress.IPv6Address(web6) == ipaddress.IPv6Address("fd32::") + (
        int(ipaddress.IPv4Address(web4)) - int(ipaddress.IPv4Address("10.32.0.0"))
    )
    # Explicit addresses of both families, as the operator types them.
    out = lab.mesh(2, "attach", "10.32.0.200/12", "fd32::c8/64", c2).stdout.split()
    assert out == ["10.32.0.200/12", "fd32::c8/64"]
    c3_4, c3_6 = attach(lab, 3, c3)
    # An IPv6 address of the range that is not the image of the IPv4 one is refused.
    bad = lab.mesh(3, "attach", "10.32.0.77/12", "fd32::99/64", lab.container("x"), check=False)
    assert bad.returncode != 0
    assert "attach 10.32.0.153 instead" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    # ping -6 across hosts, and TCP over IPv6 with the bytes checked.
    assert lab.in_ns(c2, "ping", "-6", "-c2", "-W2", web6, check=False).returncode == 0
    assert lab.in_ns(c3, "ping", "-6", "-c2", "-W2", "fd32::c8", check=False).returncode == 0
    sent, got = tcp_transfer(lab, c3, web, web6, 4 << 20)
    assert sent == got
    assert sent.startswith(str(4 << 20))
    # Names: A and AAAA for each, PTR of both families, on every host.
    name = f"{web}.mesh.local"
    lab.wait_for("AAAA on h3", lambda: dig(lab, c3, "AAAA", name) == [web6], timeout=10)
    assert dig(lab, c2, "A", name) == [web4]
    assert dig(lab, c2, "-x", web6) == [f"{name}."]
    assert dig(lab, c2, "-x", web4) == [f"{name}."]
    hosts6 = lab.in_ns(c3, "getent", "ahostsv6", name, check=False).stdout
    assert web6 in hosts6
    # The resolver answers on its IPv6 (link-local) address too.
    assert status(lab, 2)["dns"]["addresses"] == ["169.254.53.53", "fe80::53"]
    assert dig(lab, c2, "@fe80::53%ethwe", "AAAA", f"{c3}.mesh.local") == [c3_6]
    # Detaching the IPv4 address takes its image along; the explicit pair goes the same way.
    kept = lab.mesh(3, "attach", "10.32.0.90/12", c3).stdout.split()
    assert "fd32::5a/64" in kept
    lab.mesh(3, "detach", "10.32.0.90", c3)
    have = lab.in_ns(c3, "ip", "-o", "addr", "show", "dev", "ethwe").stdout
    assert "fd32::5a" not in have
    assert c3_6 in have
    assert c3_4 in have


# argv: my-mac victim-ip6 victim-mac target-ip6 target-mac.  IPv6 and
# Neighbor Discovery forged as the victim to the target, and a Router
# Advertisement to all nodes, then one honest datagram.
FORGE6 = """
import sys
from scapy.all import Ether, IPv6, UDP, sendp, conf
from scapy.layers.inet6 import (ICMPv6ND_NA, ICMPv6ND_RA, ICMPv6ND_Redirect,
    ICMPv6NDOptPrefixInfo, ICMPv6NDOptDstLLAddr)
conf.verb = 0
me, vip, vmac, tip, tmac = sys.argv[1:6]
for _ in range(5):
    sendp(Ether(dst=tmac) / IPv6(src=vip, dst=tip) / UDP(sport=1, dport=9999) / b"forged-ip6",
          iface="ethwe")
    # "the victim's address is at my MAC" (a Neighbor Advertisement for its address)
    na = ICMPv6ND_NA(tgt=vip, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=me)
    sendp(Ether(dst=tmac) / IPv6(dst=tip) / na, iface="ethwe")
    sendp(Ether(dst="33:33:00:00:00:01") / IPv6(dst="ff02::1") / na, iface="ethwe")
    ra = ICMPv6ND_RA() / ICMPv6NDOptPrefixInfo(prefix="2001:db8:bad::", prefixlen=64)
    sendp(Ether(dst="33:33:00:00:00:01") / IPv6(dst="ff02::1") / ra, iface="ethwe")
    sendp(Ether(dst=tmac) / IPv6(dst=tip) / ICMPv6ND_Redirect(tgt=vip, dst="fd32::1"),
          iface="ethwe")
print("sent")
"""

LISTEN6 = """
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", 9999)); print("ready", flush=True)
while True:
    data, addr = s.recvfrom(2048)
    print("FROM", addr[0], data.decode(errors="replace"), flush=True)
"""


def mac_of(lab: Lab, ns: str) -> str:
    out = lab.in_ns(ns, "ip", "-o", "link", "show", "dev", "ethwe").stdout.split()
    return out[out.index("link/ether") + 1]


def test_forged_ipv6_and_neighbor_discovery_reach_no_one(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    star(lab, 2, *RANGE6)
    target, victim, forger = lab.container("tg"), lab.container("vi"), lab.container("fo")
    far = lab.container("far")
    ips = {}
    for i, c in ((1, target), (2, victim), (1, forger), (2, far)):
        ips[c] = attach(lab, i, c)[1]
    for c in (target, far):  # everyone knows the victim (real ND)
        lab.in_ns(c, "ping", "-6", "-c1", "-W2", ips[victim])
    with listening(lab, LISTEN6, (target, far)) as seen:
        for c in (target, far):
            args = [mac_of(lab, forger), ips[victim], mac_of(lab, victim), ips[c], mac_of(lab, c)]
            out = lab.in_ns(forger, sys.executable, "-c", FORGE6, *args, timeout=120).stdout
            assert out.strip() == "sent"
            honest = (
                "import socket; socket.socket(socket.AF_INET6, 2)"
                f".sendto(b'honest', ('{ips[c]}', 9999))"
            )
            lab.in_ns(forger, sys.executable, "-c", honest)
        time.sleep(1)
    for c in (target, far):
        assert f"FROM {ips[forger]} honest" in seen[c]
        assert "forged" not in seen[c]
        # the victim's address still maps to the victim's MAC ...
        neigh = lab.in_ns(c, "ip", "-6", "neigh", "show", ips[victim]).stdout
        assert mac_of(lab, victim) in neigh
        # ... no address or route came from the forged RA, no redirect was taken
        assert "2001:db8:bad" not in lab.in_ns(c, "ip", "-6", "addr").stdout
        assert "2001:db8:bad" not in lab.in_ns(c, "ip", "-6", "route").stdout
        assert "default" not in lab.in_ns(c, "ip", "-6", "route").stdout
    ps = lab.mesh(1, "ps").stdout
    row = next(ln for ln in ps.splitlines() if ln.startswith(forger))
    assert int(row.split()[-1]) >= 40  # counted where it entered


def test_expose_gives_the_host_both_families_and_masquerades_ipv6(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(2)
    star(lab, 2, *RANGE6)
    c2 = lab.container("c2")
    _, ip6 = attach(lab, 2, c2)
    exposed = lab.mesh(1, "expose").stdout.strip().split(", ")
    assert len(exposed) == 2  # the IPv4 address and its image
    gw6 = next(a for a in exposed if ":" in a).split("/")[0]
    assert lab.run(1, "ping", "-6", "-c1", "-W2", ip6, check=False).returncode == 0
    # An address of the range that is not an image is refused; one outside is the operator's.
    bad = lab.mesh(1, "expose", "fd32::4444/64", check=False)
    assert bad.returncode != 0
    assert "expose 10.32.68.68 instead" in bad.stderr
    # An "outside" IPv6 network on h1 with no route to the mesh: masqueraded.
    out = lab.container("out")
    lab.run(1, "ip", "link", "add", "xo", "type", "veth", "peer", "name", "eth0", "netns", out)
    lab.run(1, "ip", "addr", "add", "2001:db8:ff::1/64", "dev", "xo", "nodad")
    lab.run(1, "ip", "link", "set", "xo", "up")
    lab.in_ns(out, "ip", "addr", "add", "2001:db8:ff::2/64", "dev", "eth0", "nodad")
    lab.in_ns(out, "ip", "link", "set", "eth0", "up")
    lab.in_ns(c2, "ip", "-6", "route", "add", "default", "via", gw6)
    lab.wait_for(
        "out reached",
        lambda: (
            lab.in_ns(c2, "ping", "-6", "-c1", "-W2", "2001:db8:ff::2", check=False).returncode == 0
        ),
        timeout=10,
    )
    assert "meshrouter_nat6" in lab.run(1, "nft", "list", "tables").stdout
    lab.mesh(1, "hide")
    assert "meshrouter_nat6" not in lab.run(1, "nft", "list", "tables").stdout
    assert gw6 not in lab.run(1, "ip", "-6", "addr").stdout
