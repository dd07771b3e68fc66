"""A full disk under a running router (issue 23, part 7, end to end).

Host 1's state directory is a small tmpfs of its own.  With the router
running and a container attached, the disk is filled to the last byte:
another attach fails with one line that names the state directory and what
to do, and leaves nothing half-made (no link, no record, no address, no
temporary file); the router runs on and the attached container still talks.
With space again, the same attach works.  A launch onto a full disk fails
the same way, and the next one, with space, finds everything it had.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshrouter.testing.netlab import NO_UPSTREAM, Lab, established, sh, status

pytestmark = pytest.mark.netns

LabFactory = Callable[..., Lab]


@pytest.fixture
def small_disk_lab(lab_factory: LabFactory) -> Iterator[Lab]:
    lab = lab_factory(2)
    state = lab.state_dir(1)
    state.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", "size=2m,mode=700", "tmpfs", str(state))
    try:
        yield lab
    finally:
        lab.mesh(1, "stop", check=False)
        subprocess.run(["umount", "-l", str(state)], capture_output=True, check=False)


def fill(state: Path) -> Path:
    """Every byte of the state directory's filesystem taken."""
    filler = state / "filler"
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False
    )
    subprocess.run(  # the last partial block
        ["dd", "if=/dev/zero", f"of={state / 'filler2'}", "bs=512"],
        capture_output=True,
        check=False,
    )
    return filler


def free(state: Path) -> None:
    for name in ("filler", "filler2"):
        (state / name).unlink(missing_ok=True)


def ping(lab: Lab, src: str, ip: str) -> bool:
    return lab.in_ns(src, "ping", "-c2", "-W2", ip, check=False).returncode == 0


def test_a_full_state_directory_fails_one_attach_cleanly_and_nothing_else(
    small_disk_lab: Lab,
) -> None:
    lab = small_disk_lab
    state = lab.state_dir(1)
    lab.launch(1)
    lab.launch(2, lab.addr(1))
    c1, c2, far = lab.container("c1"), lab.container("c2"), lab.container("far")
    lab.mesh(1, "attach", "10.32.0.1/12", c1)
    lab.mesh(2, "attach", "10.32.0.9/12", far)
    lab.wait_for("UDP both ways", lambda: established(lab, 1) and established(lab, 2))
    assert ping(lab, far, "10.32.0.1")
    records_before = (state / "attachments.json").read_text()
    held_before = {a["address"] for a in status(lab, 1)["ipam"]["allocations"]}

    fill(state)
    refused = lab.mesh(1, "attach", c2, check=False)
    assert refused.returncode == 1, refused.stdout
    err = refused.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert str(state) in err, err
    assert "full" in err, err
    assert "Traceback" not in refused.stderr
    # Nothing half-made: no link in c2, no record, no address, no temporary file.
    assert "ethwe" not in lab.in_ns(c2, "ip", "-br", "link").stdout
    assert (state / "attachments.json").read_text() == records_before
    assert {a["address"] for a in status(lab, 1)["ipam"]["allocations"]} == held_before
    assert not [p.name for p in state.iterdir() if ".tmp" in p.name]
    # The router runs on; what was attached still talks.
    assert ping(lab, far, "10.32.0.1")

    free(state)
    got = lab.mesh(1, "attach", c2)
    ip2 = got.stdout.strip().split("/")[0]
    assert ping(lab, far, ip2)
    assert c2 in json.dumps(json.loads((state / "attachments.json").read_text()))


def test_a_launch_onto_a_full_disk_fails_with_one_line_and_the_next_finds_everything(
    small_disk_lab: Lab,
) -> None:
    lab = small_disk_lab
    state = lab.state_dir(1)
    lab.launch(1)
    c1 = lab.container("c1")
    cidr = lab.mesh(1, "attach", c1).stdout.strip()
    lab.mesh(1, "stop")

    fill(state)
    launch = ("launch", "--password-file", str(lab.password_file), "--dns-upstream", NO_UPSTREAM)
    refused = lab.mesh(1, *launch, check=False)
    assert refused.returncode != 0, refused.stdout
    err = refused.stderr.strip()
    assert "Traceback" not in refused.stderr, err
    assert str(state) in err, err
    assert len(err.splitlines()) <= 2, err  # the reason, and what to do

    free(state)
    lab.launch(1)
    assert cidr.split("/")[0] in {a["address"] for a in status(lab, 1)["ipam"]["allocations"]}
    assert c1 in lab.mesh(1, "ps").stdout
