"""The kernel fast path for trusted links, with real routers in namespaces:
the path chosen, the traffic on VXLAN in clear, the fallback to the encrypted
path when UDP 6784 is blocked and the return when it heals, no duplicated
broadcast, and an untrusted peer's traffic still encrypted."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from meshrouter.testing.netlab import UNDERLAY, Lab, star, status

pytestmark = pytest.mark.netns

LabFactory = Callable[..., Lab]
TRUSTED = f"{UNDERLAY}.1/32,{UNDERLAY}.2/32"  # h1 and h2 trust each other, not h3


def path(lab: Lab, i: int, nickname: str) -> str | None:
    for c in status(lab, i)["connections"]:
        if c.get("nickname") == nickname:
            return c.get("path")
    return None


def vx_tx_packets(lab: Lab, i: int) -> int:
    out = lab.run(i, "cat", "/sys/class/net/vxmesh/statistics/tx_packets").stdout
    return int(out.strip())


def capture(lab: Lab, i: int, seconds: float, what: Callable[[], object]) -> bytes:
    """Raw bytes on host i's underlay (eth0) while ``what`` runs (AF_PACKET, no tcpdump)."""
    script = (
        "import socket,time,sys\n"
        "s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(3))\n"
        "s.bind(('eth0',3))\n"
        "s.settimeout(0.2);end=time.time()+float(sys.argv[1]);out=bytearray()\n"
        "while time.time()<end:\n"
        "    try: out+=s.recv(65535)\n"
        "    except OSError: pass\n"
        "sys.stdout.buffer.write(bytes(out))\n"
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.host(i), "python3", "-c", script, str(seconds)],
        stdout=subprocess.PIPE,
    )
    time.sleep(0.5)
    try:
        what()
    finally:
        raw, _ = proc.communicate(timeout=seconds + 10)
    return raw


def broadcasts_heard(lab: Lab, sender: str, listener: str, cidr: str) -> int:
    """Send 3 UDP broadcasts from ``sender``; how many copies ``listener`` got."""
    bcast = str(ipaddress.IPv4Interface(cidr).network.broadcast_address)
    listen = (
        "import socket,time\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "s.bind(('',9999));s.settimeout(0.3);n=0;end=time.time()+3\n"
        "while time.time()<end:\n"
        "    try: s.recv(100); n+=1\n"
        "    except OSError: pass\n"
        "print(n)\n"
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", listener, "python3", "-c", listen],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    send = (
        "import socket,time\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)\n"
        f"[(s.sendto(b'x',('{bcast}',9999)),time.sleep(0.1)) for _ in range(3)]\n"
    )
    lab.in_ns(sender, "python3", "-c", send)
    out, _ = proc.communicate(timeout=10)
    return int(out.strip())


MARKER = b"CLEARTEXT-TRUSTE"  # 16 bytes: ping -p repeats them in every request


def pattern_on_underlay(lab: Lab, container: str, dst: str) -> bool:
    """Whether pings from ``container`` to ``dst`` show their pattern in clear on h1's eth0."""
    raw = capture(
        lab,
        1,
        3,
        lambda: lab.in_ns(
            container, "ping", "-c", "3", "-i", "0.2", "-p", MARKER.hex(), dst, check=False
        ),
    )
    return MARKER in raw


def test_trusted_pair_takes_the_kernel_path_and_falls_back_when_it_fails(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(3)
    star(lab, 3, "--trusted-subnets", TRUSTED)
    c = {i: lab.container(f"f{i}") for i in (1, 2, 3)}
    cidr = {i: lab.mesh(i, "attach", c[i]).stdout.strip() for i in (1, 2, 3)}
    ip = {i: cidr[i].split("/")[0] for i in (1, 2, 3)}
    lab.wait_for("h1-h2 on the kernel path", lambda: path(lab, 1, lab.host(2)) == "kernel", 20)
    assert path(lab, 2, lab.host(1)) == "kernel"
    assert path(lab, 1, lab.host(3)) == "sleeve"  # h3 is not trusted
    assert path(lab, 3, lab.host(1)) == "sleeve"
    # Unicast between h1's and h2's containers goes through the VXLAN device, in clear.
    assert lab.in_ns(c[1], "ping", "-c", "2", "-W", "2", ip[2], check=False).returncode == 0

    def programmed() -> bool:
        before = vx_tx_packets(lab, 1)
        lab.in_ns(c[1], "ping", "-c", "3", "-i", "0.2", "-W", "2", ip[2], check=False)
        return vx_tx_packets(lab, 1) >= before + 3

    lab.wait_for("h2's container MAC programmed on h1", programmed, timeout=10)
    # A ping pattern is readable on the underlay towards the trusted peer only.
    assert pattern_on_underlay(lab, c[1], ip[2])
    assert not pattern_on_underlay(lab, c[1], ip[3])
    # No duplicates while both paths exist on the bridges: unicast and a broadcast.
    out = lab.in_ns(c[1], "ping", "-c", "5", "-i", "0.2", ip[2]).stdout
    assert "DUP!" not in out
    assert " 0% packet loss" in out
    assert broadcasts_heard(lab, c[1], c[2], cidr[1]) == 3
    # Block the kernel path (UDP 6784) between h1 and h2: back to the router within seconds.
    lab.run(
        2, "nft", "add table inet fpblock; add chain inet fpblock in { type filter hook input "
        "priority 0; policy accept; }; add rule inet fpblock in udp dport 6784 drop",
    )  # fmt: skip
    try:
        lab.wait_for("fallback", lambda: path(lab, 1, lab.host(2)) == "fallback", timeout=15)
        assert "the kernel path fails" in lab.mesh(1, "doctor", check=False).stdout
        out = lab.in_ns(c[1], "ping", "-c", "5", "-i", "0.2", "-W", "2", ip[2], check=False)
        assert out.returncode == 0, out.stdout
        assert "DUP!" not in out.stdout
    finally:
        lab.run(2, "nft", "delete table inet fpblock", check=False)
    lab.wait_for("kernel path again", lambda: path(lab, 1, lab.host(2)) == "kernel", timeout=15)
    assert lab.in_ns(c[1], "ping", "-c", "2", "-W", "2", ip[2], check=False).returncode == 0
    # The mesh status says which path each connection takes.
    text = lab.mesh(1, "status", "connections").stdout
    assert "kernel VXLAN, not encrypted" in text
    # The VXLAN device goes with the router: on a clean stop, and on 'mesh stop'
    # after the router was killed with -9.
    lab.mesh(1, "stop")
    assert lab.run(1, "ip", "link", "show", "vxmesh", check=False).returncode != 0
    os.kill(lab.router_pid(2), signal.SIGKILL)
    time.sleep(0.5)
    assert lab.run(2, "ip", "link", "show", "vxmesh", check=False).returncode == 0
    lab.mesh(2, "stop")
    assert lab.run(2, "ip", "link", "show", "vxmesh", check=False).returncode != 0
