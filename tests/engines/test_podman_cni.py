"""podman (Debian's 4.3, CNI backend) puts containers on the mesh through
``mesh-cni``: two hosts in namespaces, a router on each.

podman runs from each host's namespace (``nsenter --net``: ``ip netns exec``
breaks runc), with a containers.conf and storage of the test's own (runc,
the CNI backend, the plugin directory 'mesh setup-cni' wrote).  The image is
made offline with mmdebstrap once per session.  Without podman these tests
are skipped, except where ``MESH_REQUIRE_ENGINES=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from meshrouter.testing.engines import Podman
from meshrouter.testing.netlab import Lab, star, status, tcp_transfer
from tests.conftest import PODMAN_IMAGE as IMAGE

pytestmark = [pytest.mark.netns, pytest.mark.slow]

LabFactory = Callable[..., Lab]


@pytest.fixture
def podman(podman_root: Path) -> Podman:
    return Podman(podman_root)


def two_hosts(lab: Lab, podman: Podman, *setup: str) -> None:
    star(lab, 2)
    for i in (1, 2):
        podman.setup_cni(lab, i, *setup)


def run(podman: Podman, lab: Lab, i: int, name: str, *extra: str) -> None:
    podman(lab, i, "run", "-d", "--name", name, "--network", "mesh", *extra, IMAGE, "sleep", "600")


def test_podman_containers_on_two_hosts_talk_and_rm_releases(
    lab_factory: LabFactory, podman: Podman
) -> None:
    lab = lab_factory(2)
    try:
        two_hosts(lab, podman)
        run(podman, lab, 1, "pa")
        run(podman, lab, 2, "pb")
        addr_a, addr_b = podman.address(lab, 1, "pa"), podman.address(lab, 2, "pb")
        held = {a["address"] for i in (1, 2) for a in status(lab, i)["ipam"]["allocations"]}
        assert {addr_a, addr_b} <= held  # from the mesh's IPAM
        sent, got = tcp_transfer(
            lab, podman.netns(lab, 1, "pa"), podman.netns(lab, 2, "pb"), addr_b, 8 << 20
        )
        assert sent == got
        assert sent.startswith(str(8 << 20))
        # The name podman gave it is in the mesh's DNS, and its resolv.conf points there.
        resolv = podman(lab, 2, "exec", "pb", "cat", "/etc/resolv.conf").stdout
        assert "nameserver 169.254.53.53" in resolv
        lab.wait_for(
            "pa in DNS",
            lambda: lab.mesh(2, "dns-lookup", "pa", check=False).stdout.split() == [addr_a],
            timeout=5,
        )
        run(podman, lab, 2, "pinned", "--ip", "10.32.7.7")  # podman's --ip, as runtimeConfig
        assert podman.address(lab, 2, "pinned") == "10.32.7.7"
        podman(lab, 1, "rm", "-f", "-t", "0", "pa")
        assert addr_a not in {a["address"] for a in status(lab, 1)["ipam"]["allocations"]}
        assert "pa" not in lab.mesh(1, "ps").stdout
    finally:
        for i in (1, 2):
            podman.remove_all(lab, i)


def test_twenty_podman_containers_at_once_get_distinct_addresses(
    lab_factory: LabFactory, podman: Podman
) -> None:
    lab = lab_factory(2)
    try:
        two_hosts(lab, podman)
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(lambda k: run(podman, lab, 1 + k % 2, f"p{k:02d}"), range(20)))
        addrs = [podman.address(lab, 1 + k % 2, f"p{k:02d}") for k in range(20)]
        assert len(set(addrs)) == 20
    finally:
        for i in (1, 2):
            podman.remove_all(lab, i)
    assert lab.mesh(1, "ps").stdout.count("\n") == 1  # every DEL came through


def test_podman_with_the_router_down_fails_cleanly_and_portmap_chains(
    lab_factory: LabFactory, podman: Podman
) -> None:
    lab = lab_factory(2)
    try:
        two_hosts(lab, podman, "--portmap")
        conflist = json.loads((lab.tmp / "cni-h1" / "net.d" / "10-mesh.conflist").read_text())
        assert [p["type"] for p in conflist["plugins"]] == ["mesh-cni", "portmap"]
        server = "import http.server as h; h.HTTPServer(('', 80), h.SimpleHTTPRequestHandler)"
        podman(
            lab,
            1,
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "mesh",
            "-p",
            "8080:80",
            IMAGE,
            "python3",
            "-c",
            server + ".serve_forever()",
        )
        lab.wait_for(
            "port 8080 on h1 reaches the container",
            lambda: (
                "Directory listing"
                in lab.run(
                    2,
                    "python3",
                    "-c",
                    f"import urllib.request as u; print(u.urlopen('http://{lab.addr(1)}:8080/', "
                    "timeout=2).read().decode())",
                    check=False,
                ).stdout
            ),
            timeout=15,
        )
        lab.mesh(2, "stop")
        bad = podman(
            lab,
            2,
            "run",
            "-d",
            "--name",
            "late",
            "--network",
            "mesh",
            IMAGE,
            "sleep",
            "600",
            check=False,
        )
        assert bad.returncode != 0
        assert "mesh router is not running" in bad.stderr
        assert "vethwl" not in lab.run(2, "ip", "-br", "link").stdout
    finally:
        for i in (1, 2):
            podman.remove_all(lab, i)


def test_podman_containers_attached_by_name_and_id_without_cni(
    lab_factory: LabFactory, podman: Podman
) -> None:
    """'mesh attach' finds podman's containers through podman itself."""
    lab = lab_factory(2)
    try:
        star(lab, 2)
        podman.conf(lab, 1)
        name = f"{lab.prefix}-pn"
        cid = podman(
            lab, 1, "run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "600"
        ).stdout.strip()
        conf = {k: podman.env(lab, 1)[k] for k in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF")}

        def mesh(*args: str) -> subprocess.CompletedProcess[str]:
            return lab.mesh(1, *args, check=False, env=conf, engines=True)

        got = mesh("attach", name)
        assert got.returncode == 0, got.stderr
        addr = got.stdout.strip().split("/")[0]
        assert "podman" in mesh("ps").stdout
        peer = lab.container("peer")
        lab.mesh(2, "attach", peer)
        assert lab.in_ns(peer, "ping", "-c2", "-W2", addr, check=False).returncode == 0
        assert mesh("detach", cid[:12]).returncode == 0
        stopped = podman(lab, 1, "create", "--network", "none", IMAGE, "true").stdout.strip()
        err = mesh("attach", stopped[:12])
        assert err.returncode == 1
        assert "is not running: start it first (podman start)" in err.stderr
    finally:
        podman.remove_all(lab, 1)


def unit_commands(podman: Podman, lab: Lab, name: str) -> tuple[list[str], list[str]]:
    """What the unit ``podman generate systemd --name NAME`` writes runs to
    start and to stop the container (its ExecStart and ExecStop, without the
    podman path): systemd is not PID 1 here, so the test runs them as it would."""
    unit = podman(lab, 1, "generate", "systemd", "--name", name).stdout.replace("\\\n", " ")
    cmds = {}
    for line in unit.splitlines():
        key, _, value = line.partition("=")
        if key in ("ExecStart", "ExecStop"):
            argv = value.split()
            cmds[key] = argv[argv.index(next(a for a in argv if a.endswith("podman"))) + 1 :]
    return cmds["ExecStart"], cmds["ExecStop"]


def test_a_podman_container_restarted_by_its_systemd_unit_keeps_its_address(
    lab_factory: LabFactory, podman: Podman
) -> None:
    """A podman container attached with 'mesh attach' and stopped and started
    the way its systemd unit does: it keeps its address, name and record
    while stopped (10 s, longer than the router's looks), and is on the mesh
    again with them a moment after its start; its removal frees them."""
    lab = lab_factory(2)
    try:
        podman.conf(lab, 1)
        conf = {k: podman.env(lab, 1)[k] for k in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF")}

        def mesh(*args: str) -> subprocess.CompletedProcess[str]:
            return lab.mesh(1, *args, check=False, env=conf, engines=True)

        lab.launch(2)
        launched = mesh("launch", "--password-file", str(lab.password_file), "--dns-upstream",
                        "198.18.0.254", lab.addr(2))  # fmt: skip
        assert launched.returncode == 0, launched.stderr
        name = f"{lab.prefix}-unit"
        podman(lab, 1, "run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "600")
        start, stop = unit_commands(podman, lab, name)
        assert start[0] == "start", start
        assert stop[0] == "stop", stop
        got = mesh("attach", name)
        assert got.returncode == 0, got.stderr
        cidr = got.stdout.strip()
        addr = cidr.split("/")[0]
        peer = lab.container("peer")
        lab.mesh(2, "attach", peer)
        # The two routers were launched a moment ago: their topology records
        # (spaced 0.5 s apart per neighbour) may still be on the way.
        lab.wait_for(
            "the container reachable from h2",
            lambda: lab.in_ns(peer, "ping", "-c1", "-W1", addr, check=False).returncode == 0,
            timeout=15,
        )

        podman(lab, 1, *stop)  # sleep as PID 1 ignores SIGTERM: killed after the timeout
        time.sleep(10)
        assert addr in allocated(lab, 1), "a stopped container lost its address"
        assert name in mesh("ps").stdout
        assert lab.mesh(2, "dns-lookup", name, check=False).stdout.split() == [addr]

        podman(lab, 1, *start)

        def back() -> bool:
            out = podman(lab, 1, "exec", name, "ip", "-br", "addr", check=False).stdout
            return cidr in out

        lab.wait_for("ethwe back with the same address", back, timeout=20)
        assert lab.in_ns(peer, "ping", "-c2", "-W2", addr, check=False).returncode == 0
        log = (lab.state_dir(1) / "router.log").read_text()
        assert f"attached again with {cidr}" in log, log[-2000:]

        podman(lab, 1, "rm", "-f", "-t", "0", name)
        lab.wait_for("address released", lambda: addr not in allocated(lab, 1), timeout=30)
        lab.wait_for("record gone", lambda: name not in mesh("ps").stdout, timeout=15)
    finally:
        podman.remove_all(lab, 1)


def allocated(lab: Lab, i: int) -> set[str]:
    return {a["address"] for a in status(lab, i)["ipam"]["allocations"]}
