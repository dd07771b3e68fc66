"""Scale of the control plane with real routers (issue 27, part 5, first part).

N routers as processes in namespaces on one switch, launched at once as a
star (every host knows only h1), no containers, no traffic.  For each N:
the time until every router has N-1 established connections (or the
timeout), handshakes and duplicate closes per router, then the routers'
idle CPU (all together, % of one core) and RSS over ``--idle`` seconds, and
gossip bytes sent per router per second meanwhile.  Status is read over
each router's API socket from this process (a ``mesh status`` per poll
would cost more CPU than the routers).  Bounded: each N gives up after
``--timeout`` seconds.

    python3 -m bench.scale                     # 8 16 32
    python3 -m bench.scale --routers 8 --idle 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.run import cpu_ticks
from meshrouter.contract import apiclient
from meshrouter.contract import requests as rq
from meshrouter.contract.status import RouterStatus
from meshrouter.testing.netlab import Lab


@dataclass
class Row:
    routers: int
    converged_s: float | None  # None: not within the timeout
    established_min: int  # the fewest established connections any router had at the end
    handshakes_per_conn: float
    duplicates_closed: int
    idle_cpu_pct: float  # all routers together, % of one core
    rss_mib: float  # per router, mean
    gossip_bytes_per_s: float  # per router
    stable_s: float = 0.0  # watched after convergence (--stable) ...
    closed_while_stable: int = 0  # ... and the connections closed meanwhile (all routers)
    launched_s: float = 0.0  # when the last 'mesh launch' returned (8 at a time)


def status(lab: Lab, i: int) -> RouterStatus | None:
    try:
        return apiclient.ask(lab.state_dir(i), rq.Status(), timeout=10)
    except (apiclient.RouterDown, apiclient.ApiError, OSError):
        return None


def established(st: RouterStatus | None) -> int:
    if st is None:
        return 0
    return sum(c["state"] == "established" for c in st["connections"])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def closed(sts: list[RouterStatus | None]) -> int:
    return sum(s["counters"].get("connections_closed", 0) for s in sts if s is not None)


NEIGH = [f"/proc/sys/net/ipv{v}/neigh/default/gc_thresh{k}" for v in (4, 6) for k in (1, 2, 3)]


@contextlib.contextmanager
def neighbour_room(n: int) -> Iterator[None]:
    """Room in the kernel's neighbour tables, which all namespaces share
    (at the default 1,024 entries, 33 hosts that each know the 32 others
    overflow it: "neighbor table overflow!" and no ARP), put back after."""
    old = [Path(p).read_text().strip() for p in NEIGH]
    want = max(1024, 4 * n * n)
    try:
        for p, o in zip(NEIGH, old, strict=True):
            k = int(p[-1])
            Path(p).write_text(str(max(int(o), want // (4 if k == 1 else 2 if k == 2 else 1))))
        yield
    finally:
        for p, o in zip(NEIGH, old, strict=True):
            with contextlib.suppress(OSError):
                Path(p).write_text(o)


def run(n: int, timeout: float, idle: float, stable: float = 0.0) -> Row:
    with neighbour_room(n):
        return _run(n, timeout, idle, stable)


def _run(n: int, timeout: float, idle: float, stable: float) -> Row:
    lab = Lab(f"msc{n}"[:8], n).create()
    try:
        start = time.monotonic()
        lab.launch(1)
        with ThreadPoolExecutor(max_workers=8) as pool:  # as a fleet's boot would
            list(pool.map(lambda i: lab.launch(i, lab.addr(1)), range(2, n + 1)))
        launched = time.monotonic() - start
        converged = None
        while time.monotonic() - start < timeout:
            counts = [established(status(lab, i)) for i in range(1, n + 1)]
            if min(counts) == n - 1:
                converged = time.monotonic() - start
                break
            time.sleep(1.0)
        pids = [lab.router_pid(i) for i in range(1, n + 1)]
        before = [status(lab, i) for i in range(1, n + 1)]
        t0, w0 = cpu_ticks(pids), time.monotonic()
        time.sleep(idle)
        cpu = 100 * (cpu_ticks(pids) - t0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - w0)
        after = [status(lab, i) for i in range(1, n + 1)]
        sent = [
            (a["counters"].get("gossip_bytes_sent", 0) - b["counters"].get("gossip_bytes_sent", 0))
            for a, b in zip(after, before, strict=True)
            if a is not None and b is not None
        ]
        hs = sum(s["counters"].get("handshakes", 0) for s in after if s is not None)
        dups = sum(s["counters"].get("duplicates_closed", 0) for s in after if s is not None)
        conns = max(1, sum(established(s) for s in after))
        if stable > 0 and converged is not None:
            time.sleep(stable)
            late = [status(lab, i) for i in range(1, n + 1)]
            closed_late = closed(late) - closed(after)
        else:
            closed_late = 0
        return Row(
            n,
            converged,
            min(established(s) for s in after),
            hs / conns,
            dups,
            cpu,
            sum(rss_mib(p) for p in pids) / len(pids),
            sum(sent) / max(1, len(sent)) / idle,
            stable if converged is not None else 0.0,
            closed_late,
            launched,
        )
    finally:
        lab.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--routers", type=int, nargs="*", default=[8, 16, 32])
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a full mesh")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle measured")
    ap.add_argument(
        "--stable", type=float, default=0.0, help="seconds watched after convergence for closes"
    )
    ap.add_argument(
        "--sim", type=int, nargs="*", default=[100, 300, 1000], help="simulated peer counts"
    )
    ap.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    args = ap.parse_args()
    if os.geteuid() != 0 and args.routers:
        print("bench: run as root (it builds namespaces)", file=sys.stderr)
        return 1
    rows = []
    for n in args.routers:
        print(f"{n} routers ...", flush=True)
        rows.append(run(n, args.timeout, args.idle, args.stable))
    head = (
        "routers  launched s  full mesh s  min est  handshakes/conn  dup closes  idle CPU %"
        "  RSS MiB  gossip B/s  closed in stable window"
    )
    print(head)
    for r in rows:
        conv = f"{r.converged_s:.1f}" if r.converged_s is not None else "never"
        window = f"{r.closed_while_stable} in {r.stable_s:.0f} s" if r.stable_s else "-"
        print(
            f"{r.routers:7d}  {r.launched_s:10.1f}  {conv:>11}  {r.established_min:7d}"
            f"  {r.handshakes_per_conn:15.2f}"
            f"  {r.duplicates_closed:10d}  {r.idle_cpu_pct:10.1f}  {r.rss_mib:7.1f}"
            f"  {r.gossip_bytes_per_s:10.0f}  {window}"
        )
    sims = simulated(args.sim)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"routers": [asdict(r) for r in rows], "simulated": sims}, indent=2)
    )
    print(f"wrote {args.out}")
    return 0


def simulated(counts: list[int]) -> list[dict[str, float | int | None]]:
    """The gossip simulator (``tools.gossipsim``: the router's own Gossip and
    Spreader, a sparse random graph, no loss) at each peer count: what
    converging costs, what one change costs, what an idle minute costs."""
    from tools.gossipsim import simulate

    out: list[dict[str, float | int | None]] = []
    if not counts:
        return out
    print(
        "simulated peers  connections  converged s  KiB/peer to converge  "
        "msgs/peer per change  B/peer per change  idle B/s per peer"
    )
    for n in counts:
        r = simulate(n, loss=0.0, seed=1, steady=60.0)
        conv = f"{r.converged_at:.1f}" if r.converged_at is not None else "never"
        print(
            f"{r.peers:15d}  {r.edges:11d}  {conv:>11}  {r.bytes_per_peer_mean / 1024:20.1f}"
            f"  {r.change_messages_per_peer:20.2f}  {r.change_bytes_per_peer:17.0f}"
            f"  {r.steady_bytes_per_peer_per_s:17.0f}",
            flush=True,
        )
        out.append(asdict(r))
    return out


if __name__ == "__main__":
    sys.exit(main())
