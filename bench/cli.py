"""What the ``mesh`` command costs a user (and a CNI plugin) per call.

One host in a network namespace with a router, and ten container namespaces.
Times, as the median of several calls (wall clock, and the CPU the command's
own process used, which is its own work, without the router's):

* a bare ``python3 -c pass`` (the floor every command pays),
* ``mesh --version``, ``mesh --help``, ``mesh status``,
* ``mesh attach CONTAINER`` (an address from IPAM) for ten containers in a row.

Every command runs through ``ip netns exec`` like the bare interpreter, so the
ratios compare like with like. ``--repo DIR`` measures another checkout's
client and router (e.g. a ``git worktree`` of an older commit) for a before
and after in the same window.

    python3 -m bench.cli [--repo DIR] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from meshrouter.testing.netlab import REPO, Lab

PREFIX = "mcli"


def timed(lab: Lab, repo: Path, *args: str) -> tuple[float, float]:
    """Run ``ARGS`` on host 1; return (wall ms, own CPU ms)."""
    env = dict(
        os.environ,
        MESH_STATE_DIR=str(lab.state_dir(1)),
        MESH_NO_DOCKER="1",
        PYTHONPATH=str(repo),
    )
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.host(1), *args],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = (time.perf_counter() - t0) * 1e3
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {err.strip()}")
    return wall, (usage.ru_utime + usage.ru_stime) * 1e3


def median_of(lab: Lab, repo: Path, rounds: int, *args: str) -> tuple[float, float]:
    runs = [timed(lab, repo, *args) for _ in range(rounds)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout to measure (default: this)")
    ap.add_argument("--rounds", type=int, default=7, help="calls per figure (default: 7)")
    a = ap.parse_args()
    repo = a.repo.resolve()
    py = sys.executable
    mesh = (py, "-m", "launcher")
    with Lab(f"{PREFIX}{os.getpid() % 1000}", 1) as lab:
        lab.create()
        timed(lab, repo, *mesh, "launch", "--password-file", str(lab.password_file))
        deadline = time.monotonic() + 30
        while True:  # the ring of one peer is made after a short settle
            try:
                timed(lab, repo, *mesh, "attach", lab.container("warm"))
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        rows = [
            ("python3 -c pass", median_of(lab, repo, a.rounds, py, "-c", "pass")),
            ("mesh --version", median_of(lab, repo, a.rounds, *mesh, "--version")),
            ("mesh --help", median_of(lab, repo, a.rounds, *mesh, "--help")),
            ("mesh status", median_of(lab, repo, a.rounds, *mesh, "status")),
        ]
        attaches = [timed(lab, repo, *mesh, "attach", lab.container(f"c{k}")) for k in range(10)]
        rows.append(
            (
                "mesh attach (x10)",
                (
                    statistics.median(w for w, _ in attaches),
                    statistics.median(c for _, c in attaches),
                ),
            )
        )
        total = sum(w for w, _ in attaches)
    floor = rows[0][1][0]
    print(f"client cost, {repo} (median of {a.rounds} calls; attach: 10 in a row)")
    print(f"  {'command':20s} {'wall ms':>8s} {'own CPU ms':>11s} {'x bare':>7s}")
    for name, (wall, cpu) in rows:
        print(f"  {name:20s} {wall:8.1f} {cpu:11.1f} {wall / floor:7.2f}")
    print(f"  ten attaches in a row: {total / 1e3:.2f} s")


if __name__ == "__main__":
    main()
