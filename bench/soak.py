"""Churn soak: containers come and go on two hosts for a while; what the
routers and hosts hold is counted before and after (issue 23, part 5).

Two lab hosts in namespaces, each with its router (a process), a dockerd of
its own in its namespace and podman with the mesh as its CNI network.  On
both hosts at once:

* DOCKER cycles of ``docker run --network none`` / ``mesh attach`` /
  ``docker stop`` / ``docker start`` / ``docker restart`` / ``docker rm -f``
  (the router attaches a restarted container again with its address);
* CNI cycles of ``podman run --rm --network mesh ... true`` (ADD and DEL);
* NETNS cycles of ``ip netns add`` / ``mesh attach`` / ``mesh detach`` /
  ``ip netns del``.

Before (after one warm-up cycle of each) and after (once the routers have
forgotten the last removed container): router RSS, open fds, threads, trio
tasks; the host's veths, nftables chains and processes; the mesh's IPAM and
DNS entries and attachment records.  Every few cycles both routers' address
lists are sampled for an address held twice.  Bounded in count and time;
exits 1 if anything is not flat.

    python3 -m bench.soak                      # 300 / 200 / 200, at most 30 min
    python3 -m bench.soak --docker 20 --cni 20 --netns 20
    python3 -m bench.soak --rootfs /tmp/rootfs.tar   # a base made earlier
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from meshrouter.testing.engines import make_rootfs
from meshrouter.testing.soak import Churn, flat, soak_lab


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--docker", type=int, default=300, help="Docker cycles (default 300)")
    ap.add_argument("--cni", type=int, default=200, help="podman CNI ADD/DEL (default 200)")
    ap.add_argument("--netns", type=int, default=200, help="netns attach/detach (default 200)")
    ap.add_argument("--seconds", type=float, default=1800, help="at most this long (default 1800)")
    ap.add_argument("--rootfs", type=Path, help="a rootfs tar made earlier (else mmdebstrap)")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    for tool in ("dockerd", "podman", "runc", "mmdebstrap", "nsenter"):
        if shutil.which(tool) is None:
            print(f"soak: {tool} is missing: run 'bash scripts/setup.sh' first", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="meshsoak-"))
    try:
        rootfs = args.rootfs or make_rootfs(work / "rootfs.tar")
        plan = Churn(args.docker, args.cni, args.netns, args.seconds)
        t0 = time.monotonic()
        with soak_lab("msoak", rootfs) as soak:
            result = soak.run(plan, log=lambda s: print(f"soak: {s}", flush=True))
        took = time.monotonic() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nchurn soak, two hosts, {took:.0f} s in all")
    print(result.summary())
    print()
    print(result.table())
    grew = flat(result)
    print("\nflat: yes" if not grew else "\nNOT flat:\n  " + "\n  ".join(grew))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "done": result.done,
                    "elapsed": result.elapsed,
                    "samples": result.samples,
                    "held_twice": result.held_twice,
                    "before": result.before,
                    "after": result.after,
                },
                indent=2,
            )
        )
    return 1 if grew else 0


if __name__ == "__main__":
    sys.exit(main())
