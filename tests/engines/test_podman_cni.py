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
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshrouter.testing.netlab import Lab, star, status, tcp_transfer
from tests.conftest import require

pytestmark = [pytest.mark.netns, pytest.mark.slow]

LabFactory = Callable[..., Lab]
IMAGE = "localhost/meshtest:1"
TOOLS = ("podman", "runc", "nsenter")


@dataclass
class Podman:
    root: Path

    def env(self, lab: Lab, i: int) -> dict[str, str]:
        return dict(
            os.environ,
            CONTAINERS_CONF=str(self.conf(lab, i)),
            CONTAINERS_STORAGE_CONF=str(self.root / "storage.conf"),
        )

    def conf(self, lab: Lab, i: int) -> Path:
        """containers.conf of host i: runc, the CNI backend, host i's plugin and conflist."""
        d = lab.tmp / f"cni-h{i}"
        path = d / "containers.conf"
        if not path.exists():
            d.mkdir(parents=True, exist_ok=True)
            path.write_text(
                "[containers]\n"
                'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
                '[engine]\nruntime = "runc"\n'
                "[network]\n"
                'network_backend = "cni"\n'
                f'cni_plugin_dirs = ["/usr/lib/cni", "{d / "bin"}"]\n'
                f'network_config_dir = "{d / "net.d"}"\n'
            )
        return path

    def setup_cni(self, lab: Lab, i: int, *extra: str) -> None:
        d = lab.tmp / f"cni-h{i}"
        self.conf(lab, i)
        lab.mesh(
            i, "setup-cni", "--bin-dir", str(d / "bin"), "--conf-dir", str(d / "net.d"), *extra
        )

    def __call__(
        self, lab: Lab, i: int, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["nsenter", f"--net=/run/netns/{lab.host(i)}", "podman", *args],
            capture_output=True,
            text=True,
            env=self.env(lab, i),
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def netns(self, lab: Lab, i: int, name: str) -> str:
        """The name under /run/netns of a container's network namespace."""
        key = self(lab, i, "inspect", "-f", "{{.NetworkSettings.SandboxKey}}", name).stdout
        return Path(key.strip()).name

    def address(self, lab: Lab, i: int, name: str) -> str:
        out = self(lab, i, "exec", name, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        return out.split("inet ")[1].split("/")[0]

    def remove_all(self, lab: Lab, i: int) -> None:
        self(lab, i, "rm", "-af", "-t", "0", check=False)


@pytest.fixture(scope="session")
def podman_root(rootfs_tar: Path) -> Iterator[Path]:
    require(*TOOLS)
    if not Path("/usr/lib/cni/portmap").exists():
        require("/usr/lib/cni/portmap")  # containernetworking-plugins
    root = Path(tempfile.mkdtemp(prefix="mtpodman-"))
    (root / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n'
    )
    env = dict(os.environ, CONTAINERS_STORAGE_CONF=str(root / "storage.conf"))
    try:
        subprocess.run(
            ["podman", "import", str(rootfs_tar), IMAGE],
            check=True,
            env=env,
            timeout=300,
            capture_output=True,
        )
        yield root
    finally:
        subprocess.run(
            ["podman", "system", "reset", "-f"],
            env=env,
            capture_output=True,
            check=False,
            timeout=300,
        )
        shutil.rmtree(root, ignore_errors=True)


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
