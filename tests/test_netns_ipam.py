"""IPAM in namespaces: concurrent allocation across hosts, restarts, reclaiming."""

from __future__ import annotations

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
    star(lab, 3)
    per_host = 10
    names = {i: [lab.container(f"a{i}x{k}") for k in range(per_host)] for i in (1, 2, 3)}
    procs = [(i, c, mesh_cmd(lab, i, "attach", c)) for i in (1, 2, 3) for c in names[i]]
    addrs: dict[str, str] = {}
    for i, c, p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, f"{c} on h{i}: {err}"
        addrs[c] = out.strip()
    ips = [a.split("/")[0] for a in addrs.values()]
    assert len(ips) == 3 * per_host
    assert len(set(ips)) == len(ips), "an address was given out twice"
    assert all(a.endswith("/12") for a in addrs.values())
    # Every host now owns a share; every allocation is in its owner's share.
    shares = status(lab, 1)["ipam"]["shares"]
    assert len(shares) == 3
    # Reachable: one container on h1 pings every container on the other hosts.
    src = names[1][0]
    for c in names[2] + names[3]:
        ip = addrs[c].split("/")[0]
        r = lab.in_ns(src, "ping", "-c", "1", "-W", "2", ip, check=False)
        assert r.returncode == 0, f"{src} cannot reach {c} at {ip}"
    # Detach releases: the address can be handed out again.
    gone = names[2][0]
    lab.mesh(2, "detach", gone)
    listed = [a["container"] for a in status(lab, 2)["ipam"]["allocations"]]
    assert not any(x.endswith("/" + gone) for x in listed)


def test_restart_forgets_nothing_and_dead_namespaces_are_reclaimed(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    lab.launch(1)
    lab.launch(2, lab.addr(1))
    lab.wait_for("connected", lambda: full_mesh(lab, 2), timeout=30)
    cs = [lab.container(f"r{k}") for k in range(4)]
    got = {c: lab.mesh(2, "attach", c).stdout.strip() for c in cs}
    before = status(lab, 2)["ipam"]
    os.kill(lab.router_pid(2), signal.SIGKILL)  # no clean shutdown
    lab.mesh(2, "launch", "--password-file", str(lab.password_file), lab.addr(1))
    lab.wait_for("reconnected", lambda: full_mesh(lab, 2), timeout=30)
    after = status(lab, 2)["ipam"]
    assert after["allocations"] == before["allocations"]
    assert [s["owned"] for s in after["shares"]] == [s["owned"] for s in before["shares"]]
    # A restarted router keeps giving out only free addresses.
    new = lab.mesh(2, "attach", lab.container("r9")).stdout.strip()
    assert new not in got.values()
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
