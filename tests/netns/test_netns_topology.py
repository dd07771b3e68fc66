"""A true mesh in namespaces: discovery, relaying, loss and rejoin, partition and heal."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from meshrouter.testing.netlab import Lab, status

pytestmark = pytest.mark.netns

LabFactory = Callable[..., Lab]


def established_peers(lab: Lab, i: int) -> set[str]:
    return {c["nickname"] for c in status(lab, i)["connections"] if c["state"] == "established"}


def full_mesh(lab: Lab, hosts: list[int]) -> bool:
    for i in hosts:
        want = {lab.host(j) for j in hosts if j != i}
        if established_peers(lab, i) != want:
            return False
    return True


def route_to(lab: Lab, i: int, j: int) -> str:
    """'direct', 'via NICK' or 'unreachable', as host i sees host j."""
    st = status(lab, i)
    nick = {p["peer"]: p["nickname"] for p in st["peers"]}
    for p in st["peers"]:
        if p["nickname"] == lab.host(j):
            if p["via"]:
                return f"via {nick.get(p['via'], p['via'])}"
            return "direct" if p["reachable"] else "unreachable"
    return "unknown"


def sees_link(lab: Lab, i: int, a: int, b: int) -> bool:
    """True when host i's view has hosts a and b established to each other."""
    st = status(lab, i)
    nick = {p["peer"]: p["nickname"] for p in st["peers"]}
    links = {
        (p["nickname"], nick.get(c["peer"]))
        for p in st["peers"]
        for c in p["connections"]
        if c["established"]
    }
    return (lab.host(a), lab.host(b)) in links and (lab.host(b), lab.host(a)) in links


def attach_all(lab: Lab, hosts: list[int]) -> dict[int, str]:
    cs = {}
    for i in hosts:
        cs[i] = lab.container(f"c{i}")
        lab.mesh(i, "attach", f"10.32.0.{i}/12", cs[i])
    return cs


def ping_ok(lab: Lab, src: str, dst_ip: str, count: int = 3) -> bool:
    r = lab.in_ns(src, "ping", "-c", str(count), "-i", "0.2", "-W", "2", dst_ip, check=False)
    return " 0% packet loss" in r.stdout


def star(lab: Lab, n: int) -> None:
    """Host 1 first; every other host is told only about host 1."""
    lab.launch(1)
    for i in range(2, n + 1):
        lab.launch(i, lab.addr(1))


def test_star_launch_becomes_full_mesh_and_traffic_flows(lab_factory: LabFactory) -> None:
    lab = lab_factory(4)
    star(lab, 4)
    lab.wait_for("full mesh", lambda: full_mesh(lab, [1, 2, 3, 4]), timeout=30)
    st = status(lab, 3)
    assert {p["nickname"] for p in st["peers"]} == {lab.host(i) for i in range(1, 5)}
    discovered = [t for t in st["targets"] if t["discovered"]]
    assert discovered == [] or all(t["state"] != "connected" for t in discovered)
    cs = attach_all(lab, [2, 3, 4])
    assert ping_ok(lab, cs[2], "10.32.0.3")
    assert ping_ok(lab, cs[4], "10.32.0.2")
    text = lab.mesh(2, "status", "peers").stdout
    for i in range(1, 5):
        assert lab.host(i) in text


@pytest.mark.parametrize("udp_only", [False, True], ids=["tcp+udp-blocked", "udp-blocked"])
def test_blocked_pair_is_relayed_and_returns_direct(
    lab_factory: LabFactory, udp_only: bool
) -> None:
    lab = lab_factory(3)
    lab.block(2, 3, udp_only=udp_only)  # h2 and h3 cannot talk directly
    star(lab, 3)
    cs = attach_all(lab, [2, 3])
    # Both ways: h3 learns h2's record a gossip round after h2 learns h3's
    # (CI once saw h3 with no route yet the moment h2 had one).
    via_h1 = f"via {lab.host(1)}"
    lab.wait_for(
        "h2 and h3 reach each other via h1",
        lambda: route_to(lab, 2, 3) == via_h1 and route_to(lab, 3, 2) == via_h1,
        timeout=30,
    )
    before = status(lab, 1)["counters"].get("messages_relayed", 0)
    assert ping_ok(lab, cs[2], "10.32.0.3", count=5)
    relayed = status(lab, 1)["counters"].get("messages_relayed", 0) - before
    assert relayed >= 10  # 5 requests and 5 replies went through h1
    lab.unblock(2)
    lab.wait_for(
        "direct path back",
        lambda: route_to(lab, 2, 3) == "direct" and route_to(lab, 3, 2) == "direct",
        timeout=40,
    )
    # ... and h1 has heard of it too: until then it would still relay h2's
    # broadcasts (an ARP refresh) down its own, older broadcast tree.
    lab.wait_for("h1 sees h2-h3", lambda: sees_link(lab, 1, 2, 3), timeout=40)
    before = status(lab, 1)["counters"].get("messages_relayed", 0)
    assert ping_ok(lab, cs[2], "10.32.0.3", count=5)
    assert status(lab, 1)["counters"].get("messages_relayed", 0) == before


def test_lost_peer_is_noticed_and_rejoins(lab_factory: LabFactory) -> None:
    lab = lab_factory(3)
    star(lab, 3)
    lab.wait_for("full mesh", lambda: full_mesh(lab, [1, 2, 3]), timeout=30)
    cs = attach_all(lab, [1, 2])
    os.kill(lab.router_pid(3), signal.SIGKILL)
    t0 = time.monotonic()
    lab.wait_for(
        "h3 gone from h1 and h2",
        lambda: (
            lab.host(3) not in established_peers(lab, 1)
            and lab.host(3) not in established_peers(lab, 2)
        ),
        timeout=15,
    )
    lost_after = time.monotonic() - t0
    assert ping_ok(lab, cs[1], "10.32.0.2")
    # h3 comes back without operator action on h1 or h2.
    lab.mesh(3, "launch", "--password-file", str(lab.password_file))
    lab.wait_for("rejoined", lambda: full_mesh(lab, [1, 2, 3]), timeout=30)
    print(f"peer loss noticed after {lost_after:.1f}s")


def test_partition_heals(lab_factory: LabFactory) -> None:
    lab = lab_factory(3)
    star(lab, 3)
    lab.wait_for("full mesh", lambda: full_mesh(lab, [1, 2, 3]), timeout=30)
    cs = attach_all(lab, [1, 3])
    lab.block(1, 2, 3)  # h1 cut off from everyone
    lab.wait_for(
        "partitioned",
        lambda: established_peers(lab, 1) == set() and established_peers(lab, 2) == {lab.host(3)},
        timeout=20,
    )
    assert not ping_ok(lab, cs[1], "10.32.0.3", count=1)
    lab.unblock(1)
    lab.wait_for("healed", lambda: full_mesh(lab, [1, 2, 3]), timeout=40)
    assert ping_ok(lab, cs[1], "10.32.0.3")


def test_seven_hosts_converge(lab_factory: LabFactory) -> None:
    n = 7
    lab = lab_factory(n)
    t0 = time.monotonic()
    star(lab, n)
    lab.wait_for(
        "7-host full mesh", lambda: full_mesh(lab, list(range(1, n + 1))), timeout=60, interval=0.5
    )
    took = time.monotonic() - t0
    gossip = [status(lab, i)["gossip"]["bytes_sent"] for i in range(1, n + 1)]
    print(
        f"{n} hosts converged in {took:.1f}s (launch included); "
        f"gossip sent per peer: {min(gossip)}-{max(gossip)} bytes"
    )


def test_under_a_connection_limit_the_mesh_stays_partial_routed_and_whole(
    lab_factory: LabFactory,
) -> None:
    """Eight routers with --conn-limit 3, launched as a line: each keeps at
    most 3 connections, every one reaches every other (relayed), containers
    at the two ends ping each other, and IPAM hands out distinct addresses
    with names all hosts resolve."""
    n = 8
    lab = lab_factory(n)
    limit = ("--conn-limit", "3")
    lab.launch(1, extra=limit)
    for i in range(2, n + 1):
        lab.launch(i, lab.addr(i - 1), extra=limit)

    def whole() -> bool:
        for i in range(1, n + 1):
            st = status(lab, i)
            if sum(1 for p in st["peers"] if p["reachable"]) != n:
                return False
        return True

    lab.wait_for("every router reaches every other", whole, timeout=90)
    lab.wait_for(
        "IPAM ready everywhere",
        lambda: all(status(lab, i)["ipam"]["ready"] for i in range(1, n + 1)),
        timeout=60,
    )
    for i in range(1, n + 1):
        assert len(status(lab, i)["connections"]) <= 3
    cs = {i: lab.container(f"c{i}") for i in (1, n)}
    got = {i: lab.mesh(i, "attach", cs[i]).stdout.split()[0].split("/")[0] for i in (1, n)}
    assert got[1] != got[n]
    # The first ARP crosses the broadcast tree of a mesh still choosing its
    # connections: wait for one answer, then every ping of a run must come back.
    lab.wait_for("c1 reaches c8", lambda: ping_ok(lab, cs[1], got[n], count=1), timeout=20)
    assert ping_ok(lab, cs[1], got[n], count=10)
    relayed = sum(status(lab, i)["counters"].get("messages_relayed", 0) for i in range(2, n))
    direct = lab.host(n) in established_peers(lab, 1)
    assert direct or relayed > 0
    lab.wait_for(
        "h1 resolves the far container's name",
        lambda: got[n] in lab.mesh(1, "dns-lookup", cs[n], check=False).stdout,
        timeout=30,
    )
