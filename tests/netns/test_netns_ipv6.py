"""Peers over IPv6 underlays (issue 24, part 1): hosts whose underlay has
only IPv6 addresses, and a mixed mesh of an IPv6-only host, a dual-stack
one and an IPv4-only one, where the dual-stack router relays between the
other two.  Real routers in namespaces; containers on IPv4 overlay
addresses; data over UDP and control over TCP, both over IPv6."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import pytest

from meshrouter.testing.netlab import NETNS_ETC, Lab, established, status, tcp_transfer

pytestmark = pytest.mark.netns


@pytest.fixture
def v6_lab() -> Iterator[Callable[..., Lab]]:
    made: list[Lab] = []

    def make(underlay: str | dict[int, str], hosts: int) -> Lab:
        lab = Lab(f"mt{os.getpid() % 10000}6{len(made)}"[:8], hosts, underlay=underlay)
        made.append(lab)
        return lab.create()

    try:
        yield make
    finally:
        for lab in made:
            lab.close()


def udp_addresses(lab: Lab, i: int) -> list[str]:
    return [str(c["udp_address"]) for c in status(lab, i)["connections"] if c["udp_address"]]


def test_an_ipv6_only_underlay_carries_the_mesh(v6_lab: Callable[..., Lab]) -> None:
    lab = v6_lab("6", 2)
    assert "198.18" not in lab.run(1, "ip", "-br", "addr").stdout  # no IPv4 on it
    # h2 knows h1 by a name with only an AAAA record ('ip netns exec' gives
    # the host's namespace /etc/netns/HOST/hosts as its /etc/hosts).
    hosts = NETNS_ETC / lab.host(2) / "hosts"
    hosts.parent.mkdir(parents=True, exist_ok=True)
    hosts.write_text(f"127.0.0.1 localhost\n{lab.addr(1)} node1.lab.example\n")
    lab.launch(1)
    lab.launch(2, "node1.lab.example")
    c1, c2 = lab.container("c1"), lab.container("c2")
    lab.mesh(1, "attach", "10.32.0.1/12", c1)
    lab.mesh(2, "attach", "10.32.0.2/12", c2)  # waits for 1 of 1 initial peers
    lab.wait_for("UDP both ways", lambda: established(lab, 1) and established(lab, 2))
    assert udp_addresses(lab, 2) == ["[2001:db8:18::1]:6783"]
    assert lab.in_ns(c1, "ping", "-c2", "-W2", "10.32.0.2", check=False).returncode == 0
    sent, got = tcp_transfer(lab, c1, c2, "10.32.0.2", 4 << 20)
    assert sent == got
    assert sent.startswith(str(4 << 20))
    # Path MTU over IPv6: 40 bytes of IP header, not 20, and no fragments.
    lab.wait_for(
        "path MTU confirmed",
        lambda: all(c["pmtu_confirmed"] for c in status(lab, 1)["connections"]),
        timeout=15,
    )
    sizes = {c["datagram_size"] for c in status(lab, 1)["connections"]}
    assert sizes == {1452}, sizes  # 1500 - 40 - 8
    # The 1472-byte probe does not even fit our own link: an answer, not a drop.
    st1 = status(lab, 1)
    assert "heartbeat_send_failed" not in st1["drops"], st1["drops"]
    assert st1["counters"].get("probes_larger_than_link", 0) > 0
    shown = lab.mesh(2, "status").stdout
    assert "2001:db8:18::1" in shown
    doctor = lab.mesh(2, "doctor", "--verbose", check=False).stdout
    assert "over IPv6, path MTU 1452" in doctor, doctor
    # 1452 bytes hold a 1376-byte frame only in two datagrams: doctor says what fits one.
    assert "--mtu 1364" in doctor, doctor
    # A peer given bare (no brackets, no port) is taken too.
    lab.mesh(1, "connect", lab.addr(2))
    targets = json.loads(lab.mesh(1, "status", "--json").stdout)["targets"]
    assert any("2001:db8:18::2" in str(t) for t in targets), targets


def test_a_dual_stack_router_relays_between_ipv6_only_and_ipv4_only_hosts(
    v6_lab: Callable[..., Lab],
) -> None:
    """h1 has only IPv6, h3 only IPv4, h2 both: h1 and h3 cannot reach each
    other, so their containers' traffic goes through h2's router."""
    lab = v6_lab({1: "6", 2: "46", 3: "4"}, 3)
    lab.launch(2)
    lab.launch(1, lab.peer(2, 6))
    lab.launch(3, lab.peer(2, 4))
    c1, c3 = lab.container("c1"), lab.container("c3")
    lab.mesh(1, "attach", "10.32.0.1/12", c1)
    lab.mesh(3, "attach", "10.32.0.3/12", c3)
    lab.wait_for("h2 talks to both", lambda: established(lab, 2, 2), timeout=30)
    lab.wait_for(
        "relayed ping",
        lambda: lab.in_ns(c1, "ping", "-c1", "-W1", "10.32.0.3", check=False).returncode == 0,
        timeout=30,
    )
    sent, got = tcp_transfer(lab, c1, c3, "10.32.0.3", 1 << 20)
    assert sent == got
    # h2 carries both families at once.
    assert sorted(udp_addresses(lab, 2)) == sorted([f"[{lab.addr(1)}]:6783", f"{lab.addr(3)}:6783"])
    st2 = status(lab, 2)
    assert (
        st2["counters"].get("frames_relayed", 0) > 0
        or st2["counters"].get("messages_relayed", 0) > 0
    ), st2["counters"]


def test_a_dual_stack_peer_known_by_ipv4_is_reached_over_ipv6_by_what_it_advertises(
    v6_lab: Callable[..., Lab],
) -> None:
    """h2 joined through h1 over IPv4, so h1's record of it says IPv4; h3 has
    only IPv6 and accepts no connections (a firewall), so it must dial h2,
    and learns h2's IPv6 address from h2's own record: a direct connection,
    not a relay through h1."""
    lab = v6_lab({1: "46", 2: "46", 3: "6"}, 3)
    rules = (
        "add table inet fw; add chain inet fw inbound { type filter hook input priority 0; }; "
        "add rule inet fw inbound tcp dport 6783 drop"
    )
    lab.run(3, "nft", rules)
    lab.launch(1)
    lab.launch(2, lab.peer(1, 4))
    lab.launch(3, lab.peer(1, 6))
    lab.wait_for(
        "h3 straight to h2",
        lambda: f"[{lab.addr(2, 6)}]:6783" in udp_addresses(lab, 3) and established(lab, 3, 2),
        timeout=30,
    )
    h2 = next(p for p in status(lab, 1)["peers"] if p["nickname"].endswith("h2"))
    said = {c["address"] for c in h2["connections"] if c["peer"] == h2["peer"]}
    assert said == {f"{lab.addr(2, 4)}:6783", f"[{lab.addr(2, 6)}]:6783"}


def test_trusted_ipv6_peers_take_the_kernel_vxlan_path(v6_lab: Callable[..., Lab]) -> None:
    """--trusted-subnets of IPv6: the VXLAN device is an IPv6 one, the path
    goes to the kernel, and the containers' traffic is counted on it."""
    lab = v6_lab("6", 2)
    trusted = ("--trusted-subnets", "2001:db8:18::/64")
    lab.launch(1, extra=trusted)
    lab.launch(2, lab.peer(1), extra=trusted)
    c1, c2 = lab.container("c1"), lab.container("c2")
    lab.mesh(1, "attach", "10.32.0.1/12", c1)
    lab.mesh(2, "attach", "10.32.0.2/12", c2)

    def kernel_path() -> bool:
        lab.in_ns(c1, "ping", "-c1", "-W1", "10.32.0.2", check=False)
        return [c.get("path") for c in status(lab, 1)["connections"]] == ["kernel"]

    lab.wait_for("the kernel path", kernel_path, timeout=30)
    # The path is up before the replan loop (every 0.5 s) has programmed the
    # far container's MAC: wait for the entry, which an IPv4 device refuses.
    lab.wait_for(
        "an FDB entry to the IPv6 peer",
        lambda: "dst 2001:db8:18::2" in lab.run(1, "bridge", "fdb", "show", "dev", "vxmesh").stdout,
        timeout=10,
    )

    def vx_tx() -> int:
        return int(lab.run(1, "cat", "/sys/class/net/vxmesh/statistics/tx_packets").stdout)

    # The bridge learns c2's MAC on the VXLAN port from c2's first frame
    # that comes that way; until then c1's frames still go to the router.
    def next_ping_on_vxlan() -> bool:
        before = vx_tx()
        lab.in_ns(c1, "ping", "-c1", "-W1", "10.32.0.2", check=False)
        return vx_tx() > before

    lab.wait_for("c1's pings on the VXLAN device", next_ping_on_vxlan, timeout=10)
    tx = vx_tx()
    assert lab.in_ns(c1, "ping", "-c5", "-i0.2", "-W2", "10.32.0.2", check=False).returncode == 0
    assert vx_tx() - tx >= 5
    sent, got = tcp_transfer(lab, c1, c2, "10.32.0.2", 2 << 20)
    assert sent == got


def test_trusted_subnets_of_both_families_are_refused_with_one_line(
    v6_lab: Callable[..., Lab],
) -> None:
    lab = v6_lab("46", 1)
    out = lab.mesh(
        1, "launch", "--password-file", str(lab.password_file),
        "--trusted-subnets", "198.18.0.0/24,2001:db8:18::/64", check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert "subnets of one family" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_garbage_over_ipv6_stops_nothing(v6_lab: Callable[..., Lab]) -> None:
    """The dual-stack sockets take input from IPv6 senders now: random UDP
    datagrams and TCP connections of garbage from an IPv6-only host (bounded:
    600 datagrams, 40 connections), and the mesh still forwards after."""
    lab = v6_lab("6", 3)
    lab.launch(1)
    lab.launch(2, lab.peer(1))
    c1, c2 = lab.container("c1"), lab.container("c2")
    lab.mesh(1, "attach", "10.32.0.1/12", c1)
    lab.mesh(2, "attach", "10.32.0.2/12", c2)
    lab.wait_for("UDP both ways", lambda: established(lab, 1) and established(lab, 2))
    script = (
        "import os, random, socket, sys\n"
        "rng = random.Random(24); target = (sys.argv[1], 6783)\n"
        "u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        "for i in range(600):\n"
        "    head = bytes([rng.choice([1, 2, 3, 4, 255])]) if i % 2 else b''\n"
        "    u.sendto(head + rng.randbytes(rng.randrange(0, 1500)), target)\n"
        "for i in range(40):\n"
        "    try:\n"
        "        t = socket.create_connection(target, timeout=2)\n"
        "        t.sendall(rng.randbytes(rng.randrange(1, 4000))); t.close()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    lab.run(3, "python3", "-c", script, lab.addr(1), timeout=60)
    assert lab.in_ns(c2, "ping", "-c2", "-W2", "10.32.0.1", check=False).returncode == 0
    st = status(lab, 1)  # answers, and still holds its one peer
    assert [c["state"] for c in st["connections"]] == ["established"]
