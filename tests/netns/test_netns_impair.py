"""A bad network below the mesh (issue 23, part 6): the mesh's UDP between
the two hosts reordered, duplicated and delayed by a userspace relay in the
lab's switch (``testing.impair``; this kernel has no netem).  Transfers
arrive intact; each duplicate is dropped and counted as a replay; a
reordered datagram inside the replay window is accepted, not dropped."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from meshrouter.testing.netlab import Lab, established, status, tcp_transfer

pytestmark = pytest.mark.netns

LabFactory = Callable[..., Lab]


def test_reordered_duplicated_delayed_datagrams_carry_a_transfer_intact(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(2)
    relay = lab.impaired(reorder=0.05, duplicate=0.03, delay_ms=1.0, seed=7)
    lab.launch(1)
    lab.launch(2, lab.addr(1))
    c1, c2 = lab.container("c1"), lab.container("c2")
    lab.mesh(1, "attach", "10.32.0.1/12", c1)
    lab.mesh(2, "attach", "10.32.0.2/12", c2)
    lab.wait_for("UDP both ways", lambda: established(lab, 1) and established(lab, 2))
    before = sum(status(lab, i)["drops"].get("replayed", 0) for i in (1, 2))
    for src, dst, ip in ((c1, c2, "10.32.0.2"), (c2, c1, "10.32.0.1")):
        sent, got = tcp_transfer(lab, src, dst, ip, 2 << 20)
        assert sent == got
        assert sent.startswith(str(2 << 20))
    replayed = sum(status(lab, i)["drops"].get("replayed", 0) for i in (1, 2)) - before
    relay.terminate()
    out, _ = relay.communicate(timeout=30)
    did = json.loads(out.strip().splitlines()[-1])
    assert did["reordered"] > 20, did
    assert did["duplicated"] > 20, did
    # Every duplicate was refused as a replay; no reordered datagram was.
    assert 0 < replayed <= did["duplicated"], (replayed, did)
    assert replayed >= did["duplicated"] * 0.5, (replayed, did)
