"""The churn soak, short (issue 23, part 5): containers come and go on two
hosts with their own dockerd and podman (``meshrouter.testing.soak``; the
full counts are ``python3 -m bench.soak``), and everything the routers and
the hosts hold is back where it was, with no address held twice meanwhile."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from meshrouter.testing.netlab import Lab
from meshrouter.testing.soak import Churn, Soak, flat
from tests.conftest import require

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def test_churn_of_docker_podman_and_netns_containers_leaks_nothing(
    lab_factory: Callable[..., Lab], rootfs_tar: Path, podman_root: Path
) -> None:
    require("dockerd", "docker")
    lab = lab_factory(2)
    with Soak(lab, rootfs_tar, podman_root) as soak:
        result = soak.run(Churn(docker=4, cni=6, netns=10, seconds=240))
    print(result.summary())
    print(result.table())
    assert result.done == {"docker": 4, "cni": 6, "netns": 10}
    assert result.samples >= 3
    assert flat(result) == []
