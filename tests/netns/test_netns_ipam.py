"""IPAM in namespaces: concurrent allocation across hosts, restarts, reclaiming."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

from meshrouter.testing.netlab import REPO, Lab, full_mesh, star, status

pytestmark = pytest.mark.netns

LabFactory = Callable[..., Lab]


def mesh_cmd(lab: Lab, i: int, *args: str) -> subprocess.Popen[str]:
    env = dict(
        os.environ, MESH_STATE_DIR=str(lab.state_dir(i)), MESH_NO_DOCKER="1", PYTHONPATH=str(REPO)
    )
    return subprocess.Popen(
        ["ip", "netns", "exec", lab.host(i), sys.executable, "-m", "launcher", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_thirty_containers_attached_concurrently_get_unique_reachable_addresses(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(3)
    star(lab, 3, "--ipalloc-range6", "fd32::/64")  # each gets an IPv6 address too
    per_host = 10
    names = {i: [lab.container(f"a{i}x{k}") for k in range(per_host)] for i in (1, 2, 3)}
    procs = [(i, c, mesh_cmd(lab, i, "attach", c)) for i in (1, 2, 3) for c in names[i]]
    addrs: dict[str, str] = {}
    addrs6: dict[str, str] = {}
    for i, c, p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, f"{c} on h{i}: {err}"
        addrs[c], addrs6[c] = out.split()
    ips = [a.split("/")[0] for a in addrs.values()]
    assert len(ips) == 3 * per_host
    assert len(set(ips)) == len(ips), "an address was given out twice"
    assert all(a.endswith("/12") for a in addrs.values())
    ips6 = {a.split("/")[0] for a in addrs6.values()}
    assert len(ips6) == len(ips), "an IPv6 address was given out twice"
    assert all(ipaddress.IPv6Interface(a) in ipaddress.IPv6Network("fd32::/64") for a in ips6)
    # Every host now owns a share; every allocation is in its owner's share.
    shares = status(lab, 1)["ipam"]["shares"]
    assert len(shares) == 3
    # Reachable: one container on h1 pings every container on the other hosts.
    src = names[1][0]
    for c in names[2] + names[3]:
        ip = addrs[c].split("/")[0]
        r = lab.in_ns(src, "ping", "-c", "1", "-W", "2", ip, check=False)
        assert r.returncode == 0, f"{src} cannot reach {c} at {ip}"
    for c in names[3]:
        ip6 = addrs6[c].split("/")[0]
        r = lab.in_ns(src, "ping", "-6", "-c", "1", "-W", "2", ip6, check=False)
        assert r.returncode == 0, f"{src} cannot reach {c} at {ip6}"
    # Detach releases: the address can be handed out again.
    gone = names[2][0]
    lab.mesh(2, "detach", gone)
    listed = [a["container"] for a in status(lab, 2)["ipam"]["allocations"]]
    assert not any(x.endswith("/" + gone) for x in listed)


def test_restart_forgets_nothing_and_dead_namespaces_are_reclaimed(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    six = ("--ipalloc-range6", "fd32::/64")
    lab.launch(1, extra=six)
    lab.launch(2, lab.addr(1), extra=six)
    lab.wait_for("connected", lambda: full_mesh(lab, 2), timeout=30)
    cs = [lab.container(f"r{k}") for k in range(4)]
    got = {c: lab.mesh(2, "attach", c).stdout.split()[0] for c in cs}
    before = status(lab, 2)["ipam"]
    ps_before = lab.mesh(2, "ps").stdout
    os.kill(lab.router_pid(2), signal.SIGKILL)  # no clean shutdown
    lab.mesh(2, "launch", "--password-file", str(lab.password_file), *six, lab.addr(1))
    lab.wait_for("reconnected", lambda: full_mesh(lab, 2), timeout=30)
    after = status(lab, 2)["ipam"]
    assert after["allocations"] == before["allocations"]
    assert [s["owned"] for s in after["shares"]] == [s["owned"] for s in before["shares"]]
    assert lab.mesh(2, "ps").stdout == ps_before  # IPv4 and IPv6 addresses kept
    # A restarted router keeps giving out only free addresses (of both families).
    new, new6 = lab.mesh(2, "attach", lab.container("r9")).stdout.split()
    assert new not in got.values()
    assert new6 not in ps_before
    # The containers kept working through the restart.
    c1 = lab.container("peer1")
    lab.mesh(1, "attach", c1)
    ip = got[cs[0]].split("/")[0]
    assert lab.in_ns(c1, "ping", "-c", "2", "-W", "2", ip, check=False).returncode == 0
    # A container whose namespace disappears gets its address back within seconds.
    lab.in_ns(cs[1], "true")
    subprocess.run(["ip", "netns", "del", cs[1]], check=True)

    def released() -> bool:
        return not any(
            a["container"].endswith("/" + cs[1]) for a in status(lab, 2)["ipam"]["allocations"]
        )

    lab.wait_for("dead namespace released", released, timeout=20)
    # ... and its record goes too ('mesh prune', which the router runs).
    lab.wait_for(
        "record forgotten",
        lambda: cs[1] not in lab.mesh(2, "ps").stdout and cs[2] in lab.mesh(2, "ps").stdout,
        timeout=10,
    )


def test_rmpeer_reclaims_a_dead_peers_share(lab_factory: LabFactory) -> None:
    lab = lab_factory(3)
    star(lab, 3)
    c3 = lab.container("z3")
    lab.mesh(3, "attach", c3)  # h3 gets a share
    lab.wait_for(
        "h3 owns a share",
        lambda: lab.host(3) in {s["nickname"] for s in status(lab, 1)["ipam"]["shares"]},
        timeout=20,
    )
    err = lab.mesh(1, "rmpeer", lab.host(3), check=False)
    assert err.returncode == 1
    assert "is connected" in err.stderr
    lab.mesh(3, "stop")
    lab.wait_for("h3 gone", lambda: full_mesh(lab, 2), timeout=20)
    out = lab.mesh(1, "rmpeer", lab.host(3)).stdout
    assert "reclaimed" in out
    for i in (1, 2):
        lab.wait_for(
            f"h{i} sees h3's share gone",
            lambda i=i: (
                lab.host(3) not in {s["nickname"] for s in status(lab, i)["ipam"]["shares"]}
            ),
            timeout=20,
        )
    text = lab.mesh(1, "status", "ipam").stdout
    assert "OWNED" in text
    assert lab.host(3) not in text


def test_a_peer_cut_off_is_taken_over_by_the_majority_and_gets_its_addresses_back(
    lab_factory: LabFactory,
) -> None:
    """Three owners; h3 is cut off.  After --reclaim-after the side of h1 and
    h2 (a majority) takes h3's share over, keeping h3's container's address
    reserved; h3 alone (a minority) takes nothing.  When the cut heals, h3
    claims its address from the new owner and its container is reachable
    with the address it always had."""
    lab = lab_factory(3)
    star(lab, 3, "--reclaim-after", "10")
    cs = {i: lab.container(f"t{i}") for i in (1, 2, 3)}
    got = {i: lab.mesh(i, "attach", c).stdout.strip() for i, c in cs.items()}
    lab.wait_for(
        "three owners",
        lambda: len(status(lab, 1)["ipam"]["shares"]) == 3,
        timeout=20,
    )
    lab.block(3, 1, 2)

    def shares(i: int) -> set[str]:
        return {s["nickname"] for s in status(lab, i)["ipam"]["shares"]}

    lab.wait_for("h3's share taken over", lambda: lab.host(3) not in shares(1), timeout=60)
    assert lab.host(3) not in shares(2)
    assert shares(3) == {lab.host(i) for i in (1, 2, 3)}  # the minority took nothing
    taker = (
        1
        if any(a["container"].endswith("/" + cs[3]) for a in status(lab, 1)["ipam"]["allocations"])
        else 2
    )
    held = {a["address"]: a["container"] for a in status(lab, taker)["ipam"]["allocations"]}
    assert held[got[3].split("/")[0]].endswith("/" + cs[3])  # kept for h3's container
    lab.unblock(3)
    lab.wait_for("mesh healed", lambda: full_mesh(lab, 3), timeout=40)
    lab.wait_for(
        "h3 re-homed its address",
        lambda: lab.host(3) not in shares(3) and status(lab, 3)["ipam"]["allocations"] == [],
        timeout=30,
    )
    assert got[3] in lab.mesh(3, "ps").stdout
    ip3 = got[3].split("/")[0]
    assert lab.in_ns(cs[1], "ping", "-c", "2", "-W", "2", ip3, check=False).returncode == 0
    log = (lab.state_dir(taker) / "router.log").read_text()
    assert "took over its address share" in log
    assert "ERROR" not in (lab.state_dir(3) / "router.log").read_text()


def test_claims_reach_an_owner_without_a_direct_connection(lab_factory: LabFactory) -> None:
    """h2 and h3 stop hearing each other just before h3 claims an address in
    h2's share: the first copies go down the dead connection, which neither
    side has noticed yet; once the heartbeat timeout drops it, the claim and
    h2's reply are relayed through h1."""
    lab = lab_factory(3)
    star(lab, 3)
    c2, c3 = lab.container("r2"), lab.container("r3")
    addr = lab.mesh(2, "attach", c2).stdout.strip()  # from h2's own share
    lab.mesh(2, "detach", c2)
    before = status(lab, 1)["counters"].get("ipam_relayed", 0)
    lab.block(2, 3)
    assert lab.mesh(3, "attach", addr, c3).stdout.strip() == addr
    assert status(lab, 1)["counters"].get("ipam_relayed", 0) >= before + 2  # claim and reply
    # h2, the owner, now counts it as h3's.
    held = {a["address"]: a["container"] for a in status(lab, 2)["ipam"]["allocations"]}
    assert held[addr.split("/")[0]].endswith("/" + c3)


def test_peer_with_another_range_is_refused(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    lab.launch(1)
    lab.launch(2, lab.addr(1), extra=("--ipalloc-range", "10.40.0.0/16"))

    def refused() -> bool:
        logs = [(lab.state_dir(i) / "router.log").read_text() for i in (1, 2)]
        return all("different IP allocation range" in text for text in logs)

    lab.wait_for("refusal logged on both sides", refused, timeout=20)
    # h2 keeps retrying, so a connection may be mid-handshake; none completes.
    assert all(c["state"] == "handshake" for c in status(lab, 1)["connections"])
    bad = lab.mesh(1, "launch", "--ipalloc-range", "10.32.0.0/33", check=False)
    assert bad.returncode == 1


def test_a_container_with_several_addresses_keeps_each_until_it_is_detached(
    lab_factory: LabFactory,
) -> None:
    """``mesh attach ADDR ADDR C`` (one in another peer's share, one from a
    subnet), reachable on each, spoof guard allowing each; attaching again is
    idempotent; ``mesh detach ADDR C`` takes one away mesh-wide."""
    lab = lab_factory(2)
    star(lab, 2)
    multi, peer = lab.container("multi"), lab.container("peer")
    lab.mesh(2, "attach", peer)
    theirs = next(
        a["address"] for a in status(lab, 2)["ipam"]["allocations"] if a["container"].endswith(peer)
    )
    claimed = str(ipaddress.IPv4Address(theirs) + 7)  # in h2's share
    out = lab.mesh(1, "attach", f"{claimed}/12", "net:10.44.0.0/16", multi).stdout.split()
    assert out[0] == f"{claimed}/12"
    assert out[1].startswith("10.44.")
    assert len(out) == 2
    second = out[1].split("/")[0]
    # Asked again: nothing new, the same two.
    assert lab.mesh(1, "attach", f"{claimed}/12", multi).stdout.split() == out
    assert lab.mesh(1, "attach", "net:10.44.0.0/16", multi).stdout.split() == out
    for src in (claimed, second):  # the guard lets it speak as either
        r = lab.in_ns(multi, "ping", "-c1", "-W2", "-I", src, theirs, check=False)
        assert r.returncode == 0, f"from {src}: {r.stdout}"
    for dst in (claimed, second):
        assert lab.in_ns(peer, "ping", "-c1", "-W2", dst, check=False).returncode == 0
    lab.wait_for(
        "both named",
        lambda: (
            sorted(lab.mesh(2, "dns-lookup", multi, check=False).stdout.split())
            == sorted([claimed, second])
        ),
        timeout=5,
    )
    gone = lab.mesh(1, "detach", second, multi)
    assert f"{out[1]} removed from {multi} (keeps {claimed}/12)" in gone.stdout
    assert second not in {a["address"] for a in status(lab, 1)["ipam"]["allocations"]}
    assert lab.in_ns(peer, "ping", "-c1", "-W1", second, check=False).returncode != 0
    assert lab.in_ns(peer, "ping", "-c1", "-W2", claimed, check=False).returncode == 0
    lab.wait_for(
        "only the first named",
        lambda: lab.mesh(2, "dns-lookup", multi, check=False).stdout.split() == [claimed],
        timeout=5,
    )
    bad = lab.mesh(1, "detach", second, multi, check=False)
    assert bad.returncode == 1
    assert f"does not have {second}" in bad.stderr
    assert f"{multi} detached ({claimed}/12)" in lab.mesh(1, "detach", claimed, multi).stdout
    assert lab.in_ns(multi, "ip", "link", "show", "ethwe", check=False).returncode != 0
    assert claimed not in {a["address"] for a in status(lab, 2)["ipam"]["allocations"]}
