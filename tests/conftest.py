from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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

    def make(hosts: int = 2) -> Lab:
        prefix = f"mt{os.getpid() % 100000}{len(labs)}"[:8]
        lab = Lab(prefix, hosts)
        labs.append(lab)
        return lab.create()

    try:
        yield make
    finally:
        for lab in labs:
            lab.close()


@pytest.fixture(scope="session")
def rootfs_tar() -> Iterator[Path]:
    """A Debian root filesystem (iproute2, python3) as a tar, made offline with
    mmdebstrap once per session, for images of real container engines.
    Skipped without mmdebstrap, unless MESH_REQUIRE_ENGINES=1 (CI) makes that
    a failure."""
    if shutil.which("mmdebstrap") is None:
        if os.environ.get("MESH_REQUIRE_ENGINES"):
            pytest.fail("container engine tests required, but mmdebstrap is missing")
        pytest.skip("needs mmdebstrap")
    d = Path(tempfile.mkdtemp(prefix="mtrootfs-"))
    tar = d / "rootfs.tar"
    try:
        subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--include=iproute2,python3", "bookworm", str(tar)],
            check=True,
            capture_output=True,
            timeout=600,
        )
        yield tar
    finally:
        shutil.rmtree(d, ignore_errors=True)


def require(*tools: str) -> None:
    """Skip (or, with MESH_REQUIRE_ENGINES=1, fail) unless every tool is installed."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        if os.environ.get("MESH_REQUIRE_ENGINES"):
            pytest.fail(f"container engine tests required, but missing: {missing}")
        pytest.skip(f"needs {missing}")
