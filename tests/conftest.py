from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

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
