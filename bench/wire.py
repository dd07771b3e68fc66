"""The encrypted paths on a wire that behaves like a network, side by side, in one run.

``bench.run`` joins the hosts with a veth that hands each 64 KiB UDP GSO send
to the other side as one buffer, which UDP GRO gives back whole: nothing is
ever lost or split.  A NIC and a network do neither.  Here the same two hosts
get an underlay that

* segments on transmit and does not coalesce on receive (``ethtool -K`` on
  every underlay veth: gso, tso, gro and tx-udp-segmentation off), and
* loses UDP datagrams at random on arrival, after segmentation, with
  nftables on each host (``meta l4proto udp numgen random mod 1000 < N
  drop`` in an input-hook chain; this kernel has no netem).

Every path then carries one TCP stream (iperf3) at each loss level: kernel
VXLAN, tinc 1.0, fastd v22 and meshrouter (C loop), as in ``bench.run``.
The control connections (TCP) are not dropped, only the UDP that carries
data.  Prints the table, each path's share of its lossless figure, and
meshrouter against issue 22's targets; writes JSON and a PNG.

    bash bench/run.sh --wire                 # 0%, 0.1% and 1% loss, 8 s a test
    python3 -m bench.wire --quick --loss 0 1
    python3 -m bench.wire --baseline v0.1.0   # that release beside this code, same run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from meshrouter.testing import release
from meshrouter.testing.netlab import Lab

from .run import PREFIX, baseline_path, iperf, setup_paths

PATHS = ["vxlan", "tinc", "fastd", "mesh"]


def wire_underlay(lab: Lab) -> None:
    lab.wire()


def set_loss(lab: Lab, percent: float) -> None:
    lab.lossy(percent)


def gbps(j: dict[str, object]) -> float:
    end = j.get("end")
    if not isinstance(end, dict):
        return 0.0
    return float(end.get("sum_received", {}).get("bits_per_second", 0)) / 1e9


def table(levels: list[float], got: dict[str, dict[float, float]]) -> str:
    head = ["path", *(f"{x:g}% loss" for x in levels), *(f"kept at {x:g}%" for x in levels[1:])]
    rows = [head]
    for name, by in got.items():
        base = by.get(levels[0], 0.0)
        kept = [f"{by[x] / base:.2f}" if base else "-" for x in levels[1:]]
        rows.append([name, *(f"{by[x]:.3f}" for x in levels), *kept])
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = [
        "  ".join(
            v.rjust(w) if c else v.ljust(w) for c, (v, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def against_targets(levels: list[float], got: dict[str, dict[float, float]]) -> list[str]:
    """Issue 22's targets, where this run has the figures."""
    out: list[str] = []
    mesh, vx, fastd = got.get("mesh", {}), got.get("vxlan", {}), got.get("fastd", {})

    def check(what: str, value: float, target: float) -> None:
        verdict = "met" if value >= target else "NOT met"
        out.append(f"{what:44s} {value:6.2f}x  target >= {target:g}x: {verdict}")

    if 0.0 in mesh and vx.get(0.0):
        check("wire 0% loss: mesh / VXLAN", mesh[0.0] / vx[0.0], 0.5)
    if 1.0 in mesh and vx.get(1.0):
        check("wire 1% loss: mesh / VXLAN", mesh[1.0] / vx[1.0], 0.25)
    if 1.0 in mesh and fastd.get(1.0):
        check("wire 1% loss: mesh / fastd", mesh[1.0] / fastd[1.0], 1.0)
    if 1.0 in mesh and mesh.get(0.0) and vx.get(0.0) and vx.get(1.0):
        kept, vx_kept = mesh[1.0] / mesh[0.0], vx[1.0] / vx[0.0]
        out.append(
            f"{'moonshot: share kept at 1% (mesh, VXLAN)':44s} {kept:6.2f}   {vx_kept:.2f} "
            f"({'met' if kept >= vx_kept else 'not met'})"
        )
    return out


def chart(levels: list[float], got: dict[str, dict[float, float]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: no matplotlib; no chart")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, by in got.items():
        ax.plot([str(x) for x in levels], [by[x] for x in levels], marker="o", label=name)
    ax.set_xlabel("UDP loss on the underlay, % (segmenting, no GRO)")
    ax.set_ylabel("TCP x1, Gbit/s")
    ax.set_yscale("log")
    ax.set_title("On a wire: one TCP stream against loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3-second tests instead of 8")
    ap.add_argument("--out", type=Path, default=Path("bench/results"), help="where JSON and PNG go")
    ap.add_argument("--loss", nargs="+", type=float, default=[0.0, 0.1, 1.0], metavar="PCT")
    ap.add_argument("--only", nargs="*", default=PATHS, choices=PATHS)
    ap.add_argument("--mesh-opts", default="", metavar="'OPTS'", help="more router options")
    ap.add_argument(
        "--baseline",
        metavar="REV",
        help="also run meshrouter as of git commit REV (built into a venv of its own), "
        "as path mesh@REV: before and after in one run",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root (it builds namespaces)", file=sys.stderr)
        return 1
    secs = 3 if args.quick else 8
    levels = sorted(set(args.loss))
    args.out.mkdir(parents=True, exist_ok=True)
    base = release.build(args.baseline) if args.baseline else None
    lab = Lab(PREFIX + "w", 2).create()
    labs = [lab]
    got: dict[str, dict[float, float]] = {}
    notes: list[str] = []
    try:
        paths = setup_paths(lab, args.only, args.mesh_opts)
        if base is not None:
            base_lab = Lab(PREFIX + "o", 2, python=base.python, repo=base.repo).create()
            labs.append(base_lab)
            paths[f"mesh@{args.baseline}"] = baseline_path(base_lab, args.mesh_opts)
        for each in labs:
            wire_underlay(each)
        for loss in levels:  # every path at one level, then the next: one machine state a level
            for each in labs:
                set_loss(each, loss)
            for name, (a, b, ip, _) in paths.items():
                print(f"measuring {name} at {loss:g}% loss ...", flush=True)
                j = iperf(lab, a, b, ip, secs=secs)
                got.setdefault(name, {})[loss] = gbps(j)
                if "error" in j:
                    notes.append(f"{name} at {loss:g}%: {j['error']}")
    finally:
        for each in reversed(labs):
            each.close()
    print()
    print("TCP x1, Gbit/s, on a wire underlay (segments on send, no GRO, random UDP loss)")
    print(table(levels, got))
    print()
    for line in against_targets(levels, got):
        print(line)
    for note in notes:
        print(f"note: {note}")
    info = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cores": os.cpu_count(),
        "seconds_per_test": secs,
        "mesh_opts": args.mesh_opts,
        "loss_percent": levels,
        "tcp1_gbps": {name: {str(k): v for k, v in by.items()} for name, by in got.items()},
    }
    (args.out / "wire.json").write_text(json.dumps(info, indent=2))
    chart(levels, got, args.out / "wire.png")
    print(f"\nwrote {args.out / 'wire.json'} and {args.out / 'wire.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
