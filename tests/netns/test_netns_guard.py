"""No spoofing: a container forging another's IP and MAC (scapy) reaches no one,
on any host; its own traffic still flows; detach removes its rules."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import pytest

from meshrouter.testing.netlab import Lab, listening, star

pytestmark = pytest.mark.netns

LabFactory = Callable[..., Lab]

# Prints "FROM <source address> <payload>" for each UDP datagram on port 9999.
LISTEN = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999)); print("ready", flush=True)
while True:
    data, addr = s.recvfrom(2048)
    print("FROM", addr[0], data.decode(errors="replace"), flush=True)
"""

# argv: victim-ip victim-mac target-ip target-mac my-ip.  Forged UDP and ARP
# (as the victim) to the target, then one honest datagram.
FORGE = """
import sys
from scapy.all import ARP, IP, UDP, Ether, sendp, conf
conf.verb = 0
vip, vmac, tip, tmac, mine = sys.argv[1:6]
udp = UDP(sport=1, dport=9999)
for _ in range(5):
    sendp(Ether(src=vmac, dst=tmac) / IP(src=vip, dst=tip) / udp / b"forged-both", iface="ethwe")
    sendp(Ether(dst=tmac) / IP(src=vip, dst=tip) / udp / b"forged-ip", iface="ethwe")
    bcast = Ether(src=vmac, dst="ff:ff:ff:ff:ff:ff")
    sendp(bcast / ARP(op=2, psrc=vip, hwsrc=vmac, pdst=tip), iface="ethwe")
    sendp(Ether(dst=tmac) / ARP(op=2, psrc=vip, pdst=tip), iface="ethwe")  # my MAC, its IP
print("sent")
"""


def mac_of(lab: Lab, ns: str) -> str:
    return lab.in_ns(ns, "cat", "/sys/class/net/ethwe/address").stdout.strip()


def test_a_forging_container_reaches_no_one_and_honest_traffic_flows(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(2)
    star(lab, 2)
    target, victim, forger = lab.container("tg"), lab.container("vi"), lab.container("fo")
    far = lab.container("far")
    ips = {}
    for i, c in ((1, target), (2, victim), (1, forger), (2, far)):
        ips[c] = lab.mesh(i, "attach", c).stdout.strip().split("/")[0]
    # Everyone knows everyone (real ARP), so a forged ARP would have to overwrite.
    for c in (target, far):
        for other in (victim, forger):
            lab.in_ns(c, "ping", "-c1", "-W2", ips[other])
    with listening(lab, LISTEN, (target, far)) as seen:
        for c in (target, far):
            args = [ips[victim], mac_of(lab, victim), ips[c], mac_of(lab, c), ips[forger]]
            out = lab.in_ns(forger, sys.executable, "-c", FORGE, *args, timeout=120).stdout
            assert out.strip() == "sent"
            honest = f"import socket; socket.socket(2, 2).sendto(b'honest', ('{ips[c]}', 9999))"
            lab.in_ns(forger, sys.executable, "-c", honest)
        time.sleep(1)
    for c in (target, far):
        assert f"FROM {ips[forger]} honest" in seen[c]
        assert "forged" not in seen[c]
        # The victim's address still maps to the victim's MAC.
        neigh = lab.in_ns(c, "ip", "neigh", "show", ips[victim]).stdout
        assert mac_of(lab, victim) in neigh
    ps = lab.mesh(1, "ps").stdout
    row = next(ln for ln in ps.splitlines() if ln.startswith(forger))
    assert int(row.split()[-1]) >= 20  # counted where it entered
    # Detached: its rules go with it.
    ports = lab.run(1, "nft", "list", "set", "bridge", "meshrouter_guard", "s_guarded").stdout
    assert ports.count('"vethwl') == 2
    lab.mesh(1, "detach", forger)
    ports = lab.run(1, "nft", "list", "set", "bridge", "meshrouter_guard", "s_guarded").stdout
    assert ports.count('"vethwl') == 1
    lab.mesh(1, "detach", target)
    tables = lab.run(1, "nft", "list", "tables").stdout
    assert "meshrouter_guard" not in tables
