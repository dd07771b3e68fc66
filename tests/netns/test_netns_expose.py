"""Host access in namespaces: ``mesh expose`` / ``hide`` and ``mesh reset``."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshrouter.testing.netlab import Lab, sh, star, status

pytestmark = pytest.mark.netns

LabFactory = Callable[..., Lab]


def pings(lab: Lab, ns: str, addr: str) -> bool:
    return lab.in_ns(ns, "ping", "-c1", "-W2", addr, check=False).returncode == 0


def test_expose_reaches_containers_and_masquerades_until_hide(lab_factory: LabFactory) -> None:
    lab = lab_factory(3)
    star(lab, 3)
    c3 = lab.container("c3")
    addr3 = lab.mesh(3, "attach", c3).stdout.strip().split("/")[0]
    assert lab.run(1, "ping", "-c1", "-W1", addr3, check=False).returncode != 0  # not yet
    exposed = lab.mesh(1, "expose").stdout.strip()
    assert lab.mesh(1, "expose").stdout.strip() == exposed  # idempotent
    gw = exposed.split("/")[0]
    assert lab.run(1, "ping", "-c1", "-W2", addr3).returncode == 0
    # An "outside" network on h1 that has no route to the mesh.
    out = lab.container("out")
    sh(
        "ip",
        "-n",
        lab.host(1),
        "link",
        "add",
        "xo",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        out,
    )
    lab.run(1, "ip", "addr", "add", "203.0.113.1/24", "dev", "xo")
    lab.run(1, "ip", "link", "set", "xo", "up")
    lab.in_ns(out, "ip", "addr", "add", "203.0.113.2/24", "dev", "eth0")
    lab.in_ns(out, "ip", "link", "set", "eth0", "up")
    lab.in_ns(c3, "ip", "route", "add", "default", "via", gw)
    assert pings(lab, c3, "203.0.113.2")  # through h1, masqueraded
    # Named in DNS after its peer, from every host.
    c2 = lab.container("c2")
    lab.mesh(2, "attach", c2)
    lab.wait_for(
        "h1's name",
        lambda: lab.mesh(2, "dns-lookup", lab.host(1), check=False).stdout.split() == [gw],
        timeout=5,
    )
    st = status(lab, 1)
    assert st["expose"] == {"addresses": [exposed], "masquerade": True}
    # Kept across a restart of the router (the bridge too is made again).
    lab.mesh(1, "stop")
    lab.launch(1)
    lab.wait_for("h1 back", lambda: pings(lab, c3, "203.0.113.2"), timeout=20)
    assert "exposed as" in lab.mesh(1, "status", "expose").stdout
    # hide undoes both, and the name.
    assert lab.mesh(1, "hide").stdout.strip() == f"hidden: {exposed}"
    assert not pings(lab, c3, "203.0.113.2")
    assert lab.run(1, "ping", "-c1", "-W1", addr3, check=False).returncode != 0
    assert "meshrouter_nat" not in lab.run(1, "nft", "list", "tables").stdout
    lab.wait_for(
        "h1's name gone",
        lambda: lab.mesh(2, "dns-lookup", lab.host(1), check=False).returncode == 1,
        timeout=5,
    )


def test_expose_without_masquerade_and_with_a_given_address(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    star(lab, 2)  # launched, and UDP flowing both ways before traffic is asked of it
    c2 = lab.container("c2")
    addr2 = lab.mesh(2, "attach", c2).stdout.strip().split("/")[0]
    lab.mesh(1, "expose", "10.32.100.1/12", "--without-masquerade", "-h", "gateway")
    assert lab.run(1, "ping", "-c1", "-W2", addr2).returncode == 0
    assert "meshrouter_nat" not in lab.run(1, "nft", "list", "tables").stdout
    assert lab.mesh(2, "dns-lookup", "gateway").stdout.split() == ["10.32.100.1"]
    bad = lab.mesh(1, "expose", "10.99.0.1/16", check=False)
    assert bad.returncode == 1
    assert "outside the mesh range" in bad.stderr


def test_reset_hands_the_share_over_and_removes_everything(lab_factory: LabFactory) -> None:
    lab = lab_factory(3)
    star(lab, 3)
    c1, c3 = lab.container("c1"), lab.container("c3")
    in_h3_share = lab.mesh(3, "attach", c3).stdout.strip()
    lab.mesh(3, "detach", c3)
    lab.mesh(1, "attach", in_h3_share, c1)  # h1's container, an address in h3's share
    lab.mesh(3, "attach", c3)
    lab.mesh(3, "expose")
    out = lab.mesh(3, "reset").stdout
    assert "address share handed to" in out
    assert not lab.state_dir(3).exists()
    assert lab.run(3, "ip", "link", "show", "mesh", check=False).returncode != 0
    assert "meshrouter" not in lab.run(3, "nft", "list", "tables").stdout
    for i in (1, 2):
        lab.wait_for(
            f"h{i} without h3's share",
            lambda i=i: (
                lab.host(3) not in {s["nickname"] for s in status(lab, i)["ipam"]["shares"]}
            ),
            timeout=20,
        )
    # Nothing lost: the new owner holds h1's container's address, so no one
    # else can have it.
    addr = in_h3_share.split("/")[0]
    holders = [
        a["container"]
        for i in (1, 2)
        for a in status(lab, i)["ipam"]["allocations"]
        if a["address"] == addr
    ]
    assert len(holders) == 1
    assert holders[0].endswith("/" + c1)
    other = lab.container("o")
    again = lab.mesh(2, "attach", in_h3_share, other, check=False)
    assert again.returncode == 1
    assert "already in use" in again.stderr
    logs = (lab.state_dir(1) / "router.log").read_text()
    assert " ERROR " not in logs
