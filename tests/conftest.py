from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshrouter.testing.engines import Dockerd, Podman, make_rootfs
from meshrouter.testing.netlab import Lab

NETNS_OK = os.geteuid() == 0 and shutil.which("ip") is not None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if NETNS_OK:
        return
    skip = pytest.mark.skip(reason="namespace tests need root and iproute2")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def lab_factory() -> Iterator[Callable[..., Lab]]:
    """Make labs with unique prefixes; all of them are torn down, pass or fail."""
    labs: list[Lab] = []

    def make(hosts: int = 2, **options: Any) -> Lab:
        prefix = f"mt{os.getpid() % 100000}{len(labs)}"[:8]
        lab = Lab(prefix, hosts, **options)
        labs.append(lab)
        return lab.create()

    try:
        yield make
    finally:
        for lab in labs:
            lab.close()


@pytest.fixture(scope="session")
def rootfs_tar() -> Iterator[Path]:
    """A Debian root filesystem (iproute2, python3, nftables, util-linux) as a
    tar, made with mmdebstrap once per session, for images of real container
    engines: the test containers' and the router image's base.
    Skipped without mmdebstrap, unless MESH_REQUIRE_ENGINES=1 (CI) makes that
    a failure."""
    if shutil.which("mmdebstrap") is None:
        if os.environ.get("MESH_REQUIRE_ENGINES"):
            pytest.fail("container engine tests required, but mmdebstrap is missing")
        pytest.skip("needs mmdebstrap")
    d = Path(tempfile.mkdtemp(prefix="mtrootfs-"))
    try:
        yield make_rootfs(d / "rootfs.tar")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def require(*tools: str) -> None:
    """Skip (or, with MESH_REQUIRE_ENGINES=1, fail) unless every tool is installed."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        if os.environ.get("MESH_REQUIRE_ENGINES"):
            pytest.fail(f"container engine tests required, but missing: {missing}")
        pytest.skip(f"needs {missing}")


TEST_IMAGE = "local/meshtest:1"
BASE_IMAGE = "local/meshrouter-base:1"
ROUTER_IMAGE = "local/meshrouter:test"


@pytest.fixture(scope="session")
def docker_host(rootfs_tar: Path) -> Iterator[Dockerd]:
    """A dockerd of the test session's own (own socket and roots, no bridge, no
    iptables; stopped after), with the test image imported."""
    require("dockerd", "docker")
    engine = Dockerd(Path(tempfile.mkdtemp(prefix="mtdocker-"))).start()
    try:
        engine.docker("import", str(rootfs_tar), TEST_IMAGE, timeout=300)
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def router_images(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The router image built as users build it (scripts/image.sh: wheels
    first, then 'docker build --network none' on a base from mmdebstrap),
    saved with the test image into one tar for engines of single tests to load.
    MESH_TEST_IMAGES names such a tar saved earlier (to iterate on tests)."""
    earlier = os.environ.get("MESH_TEST_IMAGES")
    if earlier:
        return Path(earlier)
    docker_host: Dockerd = request.getfixturevalue("docker_host")
    docker_host.docker("tag", TEST_IMAGE, BASE_IMAGE)
    repo = Path(__file__).resolve().parent.parent
    built = subprocess.run(
        ["sh", str(repo / "scripts" / "image.sh")],
        env=dict(docker_host.env, BASE=BASE_IMAGE, TAG=ROUTER_IMAGE),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    print(built.stdout.splitlines()[-1])
    tar = tmp_path_factory.mktemp("images") / "images.tar"
    docker_host.docker("save", "-o", str(tar), ROUTER_IMAGE, TEST_IMAGE, timeout=300)
    return tar


PODMAN_IMAGE = "localhost/meshtest:1"
PODMAN_TOOLS = ("podman", "runc", "nsenter")


@pytest.fixture(scope="session")
def podman_root(rootfs_tar: Path) -> Iterator[Path]:
    require(*PODMAN_TOOLS)
    if not Path("/usr/lib/cni/portmap").exists():
        require("/usr/lib/cni/portmap")  # containernetworking-plugins
    made = Podman.create(Path(tempfile.mkdtemp(prefix="mtpodman-")), rootfs_tar, PODMAN_IMAGE)
    try:
        yield made.root
    finally:
        made.destroy()
