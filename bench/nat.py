"""Two hosts behind two NATs (issue 25): throughput and RTT between their
containers over the punched direct path, side by side with the same pair
when one NAT maps per destination (nothing to punch: relayed through h1,
sealed end to end with the pair's own keys: h1 passes on what it cannot read).

Two namespace labs run at once (h1 on the "internet", h2 and h3 each behind
a NAT box of its own); iperf3 runs and pings alternate between them, so
both see the same machine.  Bounded: ``--secs`` per iperf3 run, ``--rounds``
rounds.  What crossed h1's interface is counted in each.

    python3 -m bench.nat                 # 2 rounds of 5 s each
"""

from __future__ import annotations

import argparse
import re
import statistics
from dataclasses import dataclass, field

from bench.run import iperf
from meshrouter.testing.netlab import Lab, status


@dataclass
class Path:
    name: str
    lab: Lab
    gbits: list[float] = field(default_factory=list)
    rtts: list[float] = field(default_factory=list)
    through_h1: list[int] = field(default_factory=list)
    unread: list[float] = field(default_factory=list)  # of h1's relayed messages


def setup(lab: Lab, symmetric: bool) -> None:
    lab.create()
    lab.launch(1)
    lab.launch(2, lab.addr(1))
    lab.launch(3, lab.addr(1))
    nick3 = status(lab, 3)["nickname"]
    c2, c3 = lab.container("c2"), lab.container("c3")
    lab.mesh(2, "attach", "10.32.0.2/12", c2)
    lab.mesh(3, "attach", "10.32.0.3/12", c3)

    def ready() -> bool:
        if lab.in_ns(c2, "ping", "-c1", "-W1", "10.32.0.3", check=False).returncode:
            return False
        if symmetric:  # (only h1 sees h3: its NAT is not named, its punches fail)
            p = {x["nickname"]: x for x in status(lab, 2)["peers"]}.get(nick3)
            return p is not None and p["sealed"] == "end to end"
        c = {x.get("nickname"): x for x in status(lab, 2)["connections"]}.get(nick3)
        return c is not None and c["state"] == "established"

    lab.wait_for("the path between c2 and c3", ready, timeout=90)


def measure(p: Path, secs: int) -> None:
    lab = p.lab
    c2, c3 = f"{lab.prefix}-c2", f"{lab.prefix}-c3"
    before = lab.wan_bytes(1)
    was = status(lab, 1)["counters"]
    j = iperf(lab, c2, c3, "10.32.0.3", secs=secs)
    p.through_h1.append(lab.wan_bytes(1) - before)
    now = status(lab, 1)["counters"]
    relayed = now.get("messages_relayed", 0) - was.get("messages_relayed", 0)
    unread = now.get("relayed_unread", 0) - was.get("relayed_unread", 0)
    if relayed > 1000:
        p.unread.append(unread / relayed)
    if "end" in j:
        p.gbits.append(j["end"]["sum_received"]["bits_per_second"] / 1e9)
    r = lab.in_ns(c2, "ping", "-c", "50", "-i", "0.02", "10.32.0.3", check=False, timeout=30)
    p.rtts += [float(t) for t in re.findall(r"time=([\d.]+)", r.stdout)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    paths: list[Path] = []
    try:
        for name, prefix, symmetric in (
            ("punched (direct)", "mbn1", False),
            ("relayed via h1", "mbn2", True),  # sealed end to end
        ):
            sym = frozenset({"b"} if symmetric else ())
            paths.append(Path(name, Lab(prefix, 3, nat={2: "a", 3: "b"}, symmetric=sym)))
            setup(paths[-1].lab, symmetric)
        for _ in range(args.rounds):
            for p in paths:
                measure(p, args.secs)
    finally:
        for p in paths:
            p.lab.close()
    print(f"two NATed hosts' containers, iperf3 {args.secs}s x {args.rounds}, 50 pings each")
    print(
        f"{'path':<18} {'Gbit/s':>8} {'RTT ms (median)':>16} {'MiB through h1 per run':>24}"
        f" {'unread by h1':>13}"
    )
    for p in paths:
        gb = statistics.mean(p.gbits) if p.gbits else float("nan")
        rtt = statistics.median(p.rtts) if p.rtts else float("nan")
        mib = statistics.mean(p.through_h1) / 2**20
        unread = f"{100 * min(p.unread):.1f}%" if p.unread else "-"
        print(f"{p.name:<18} {gb:>8.2f} {rtt:>16.3f} {mib:>24.1f} {unread:>13}")
    if len(paths) == 2 and paths[1].gbits and paths[0].gbits:
        ratio = statistics.mean(paths[0].gbits) / statistics.mean(paths[1].gbits)
        print(f"direct / relayed throughput: {ratio:.2f}x")


if __name__ == "__main__":
    main()
