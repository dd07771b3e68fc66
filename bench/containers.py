"""A thousand containers on one host (issue 27, part 4).

One router in a namespace host; N containers (network namespaces) attached
with ``mesh attach`` as a user would, ``--parallel`` at a time (as an
orchestrator starting a node's pods would).  Printed: the attach rate per
hundred (does it slow down as the host fills?), ``mesh ps`` and ``mesh
status`` times at the end (median of 3), the router's RSS, IPAM's
allocations, DNS names, the size of the anti-spoofing ruleset, and a ping
from the first container to the last.  Bounded: it stops attaching at
``--timeout`` seconds.

    python3 -m bench.containers                 # 1000, 4 at a time
    python3 -m bench.containers --count 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.scale import rss_mib
from meshrouter.contract import apiclient
from meshrouter.contract import requests as rq
from meshrouter.testing.netlab import Lab


def timed(fn: object, *args: object) -> float:
    t = time.monotonic()
    fn(*args)  # type: ignore[operator]
    return time.monotonic() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/containers.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root (it builds namespaces)", file=sys.stderr)
        return 1
    lab = Lab("mct", 1).create()
    result: dict[str, object] = {"count": args.count, "parallel": args.parallel}
    try:
        lab.launch(1)
        t = time.monotonic()
        names = [lab.container(f"c{k}") for k in range(args.count)]
        print(f"{args.count} namespaces made in {time.monotonic() - t:.1f} s (not counted)")
        start = time.monotonic()
        per_hundred: list[float] = []
        done = 0
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            for k in range(0, args.count, 100):
                if time.monotonic() - start > args.timeout:
                    print(f"stopped at {done}: over --timeout")
                    break
                chunk = names[k : k + 100]
                t = time.monotonic()
                list(pool.map(lambda c: lab.mesh(1, "attach", c, timeout=120), chunk))
                per_hundred.append(time.monotonic() - t)
                done += len(chunk)
                print(f"  {done:5d} attached; the last {len(chunk)} in {per_hundred[-1]:.1f} s",
                      flush=True)  # fmt: skip
        total = time.monotonic() - start
        result.update(attached=done, attach_s=total, per_hundred_s=per_hundred)
        ps = [timed(lab.mesh, 1, "ps") for _ in range(3)]
        st = [timed(lab.mesh, 1, "status") for _ in range(3)]
        recs = json.loads(lab.mesh(1, "ps", "--json").stdout)
        status = json.loads(lab.mesh(1, "status", "--json").stdout)
        rules = lab.run(1, "nft", "list", "ruleset").stdout.count("\n")
        first = recs[0]["cidrs"][0].split("/")[0] if recs else ""
        last = recs[-1]["cidrs"][0].split("/")[0] if recs else ""
        ping = lab.in_ns(names[0], "ping", "-c", "1", "-W", "2", last, check=False)
        result.update(
            ps_s=statistics.median(ps),
            status_s=statistics.median(st),
            records=len(recs),
            router_rss_mib=rss_mib(lab.router_pid(1)),
            ipam_allocations=len(status["ipam"]["allocations"]),
            dns_names=len(apiclient.ask(lab.state_dir(1), rq.Dns())["entries"]),
            nft_ruleset_lines=rules,
            ping_first_to_last=ping.returncode == 0,
        )
        print(
            f"{done} containers attached in {total:.1f} s ({done / total:.1f}/s); "
            f"'mesh ps' {result['ps_s']:.2f} s, 'mesh status' {result['status_s']:.2f} s; "
            f"router RSS {result['router_rss_mib']:.1f} MiB; IPAM {result['ipam_allocations']} "
            f"allocations; DNS {result['dns_names']} names; nft ruleset {rules} lines; "
            f"ping {first} -> {last}: {'ok' if ping.returncode == 0 else 'FAILED'}"
        )
    finally:
        lab.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
