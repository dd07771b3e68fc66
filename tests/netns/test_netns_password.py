"""Password rotation with real routers: traffic keeps flowing while the mesh
changes its password, a restart keeps the new one, and after the window a
peer with the old password is refused with the reason; one with the new
password joins."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable

import pytest

from meshrouter.testing.netlab import Lab, full_mesh, star, status

pytestmark = [pytest.mark.netns, pytest.mark.slow]

LabFactory = Callable[..., Lab]
WINDOW = 20


def epochs_everywhere(lab: Lab, hosts: tuple[int, ...], epoch: int) -> bool:
    for i in hosts:
        st = status(lab, i)
        if st["password"]["epoch"] != epoch:
            return False
        conns = [c for c in st["connections"] if c.get("peer")]
        if len(conns) < len(hosts) - 1:
            return False
        if any(c.get("key_epoch") != epoch or c["state"] != "established" for c in conns):
            return False
    return True


def test_rotation_without_downtime_then_the_old_password_is_refused(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(4)
    star(lab, 3)
    c1, c2, c3 = lab.container("p1"), lab.container("p2"), lab.container("p3")
    lab.mesh(1, "attach", "10.32.0.1/12", c1)
    lab.mesh(2, "attach", "10.32.0.2/12", c2)
    lab.mesh(3, "attach", "10.32.0.3/12", c3)
    new = lab.tmp / "new-password"
    new.write_text("a brand new mesh password\n")
    new.chmod(0o600)
    lab.wait_for(
        "c1 reaches c2",
        lambda: lab.in_ns(c1, "ping", "-c1", "-W1", "10.32.0.2", check=False).returncode == 0,
        timeout=10,
    )
    lab.block(3, 1, 2)  # h3 is cut off while the password changes
    # A steady ping across the mesh for the whole rotation (bounded: 300 x 50 ms).
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", c1, "ping", "-c", "300", "-i", "0.05", "-W", "1", "10.32.0.2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1)
        out = lab.mesh(1, "password", "rotate", "--new-file", str(new), "--window", f"{WINDOW}s")
        assert "epoch 1" in out.stdout
        lab.wait_for(
            "h1 and h2 and their connection on the new password",
            lambda: all(
                status(lab, i)["password"]["epoch"] == 1
                and any(
                    c.get("key_epoch") == 1 and c["state"] == "established"
                    for c in status(lab, i)["connections"]
                )
                for i in (1, 2)
            ),
            timeout=15,
        )
        assert status(lab, 3)["password"]["epoch"] == 0
        summary = lab.mesh(2, "status").stdout
        assert "Password: rotated 1 time(s), the previous one accepted for" in summary
    finally:
        got, _ = pinger.communicate(timeout=60)
    loss = float(re.search(r"([\d.]+)% packet loss", got).group(1))  # type: ignore[union-attr]
    print(f"ping loss during the rotation: {loss}%")
    assert loss <= 2, got[-400:]  # make before break: a ping or two at most
    # The partition heals within the window: h3 learns the key, no split.
    lab.unblock(3)
    lab.wait_for(
        "every peer and connection on the new password",
        lambda: epochs_everywhere(lab, (1, 2, 3), 1),
        timeout=WINDOW,
    )
    assert lab.in_ns(c3, "ping", "-c1", "-W2", "10.32.0.1", check=False).returncode == 0

    # A restart (with the old file on disk) keeps the new password.
    lab.mesh(2, "stop")
    lab.launch(2, lab.addr(1))
    lab.wait_for("h2 back", lambda: epochs_everywhere(lab, (1, 2, 3), 1), timeout=20)
    lab.wait_for("full mesh again", lambda: full_mesh(lab, 3), timeout=20)

    # After the window the old password is refused everywhere, with the reason.
    lab.wait_for(
        "window over",
        lambda: all(status(lab, i)["password"]["previous_accepted_for"] == 0 for i in (1, 2, 3)),
        timeout=WINDOW + 10,
    )
    lab.launch(4, lab.addr(1))  # was away: knows only the old password
    lab.wait_for(
        "h4 told why",
        lambda: "mesh password was rotated" in (lab.state_dir(4) / "router.log").read_text(),
        timeout=20,
    )
    assert not any(c["state"] == "established" for c in status(lab, 4)["connections"])
    lab.mesh(4, "stop")
    lab.mesh(4, "launch", "--password-file", str(new), lab.addr(1))
    lab.wait_for(
        "h4 joins with the new password",
        lambda: any(c["state"] == "established" for c in status(lab, 4)["connections"]),
        timeout=20,
    )
    bad = lab.mesh(1, "password", "rotate", "--new-file", str(new), check=False)
    assert bad.returncode == 1
    assert "current or a recent" in bad.stderr
