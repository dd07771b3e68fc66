"""mesh doctor on real hosts: all well, then UDP blocked, a wrong password, a dead peer."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshrouter.testing.netlab import Lab, star, status

pytestmark = pytest.mark.netns

LabFactory = Callable[..., Lab]


def test_doctor_says_what_is_wrong_and_exits_accordingly(lab_factory: LabFactory) -> None:
    lab = lab_factory(3)
    star(lab, 2)
    lab.wait_for("addresses agreed", lambda: status(lab, 1)["ipam"]["ready"], timeout=10)
    well = lab.mesh(1, "doctor")
    assert well.stdout.strip().splitlines()[-1] == "all well"
    verbose = lab.mesh(1, "doctor", "-v").stdout
    assert f"{lab.host(2)}: established" in verbose
    # UDP blocked between h1 and h2: the connection falls back to pending.
    lab.block(1, 2, udp_only=True)
    lab.wait_for(
        "UDP problem found",
        lambda: "UDP does not flow both ways" in lab.mesh(1, "doctor", check=False).stdout,
        timeout=20,
    )
    assert lab.mesh(1, "doctor", check=False).returncode == 1
    lab.unblock(1)
    # A host with another password.
    lab.password_file.write_text("another password\n")
    lab.launch(3, lab.addr(1))
    lab.wait_for(
        "password problem found",
        lambda: "refuses our password" in lab.mesh(3, "doctor", check=False).stdout,
        timeout=20,
    )
    # A peer that went away.
    lab.mesh(2, "stop")
    lab.wait_for(
        "dead peer found",
        lambda: f"peer {lab.host(2)}" in lab.mesh(1, "doctor", check=False).stdout,
        timeout=20,
    )
    lab.mesh(1, "stop")
    gone = lab.mesh(1, "doctor", check=False)
    assert gone.returncode == 1
    assert "no router is running" in gone.stderr
