"""Where the CPU goes while one TCP stream crosses meshrouter on a wire underlay.

Two hosts on an underlay that segments every send and coalesces nothing
(``Lab.wire``), optionally lossy; one iperf3 stream container to container
while ``perf record -a -g`` samples the whole machine.  Prints the share of
samples per command and object, then the routers' hottest symbols (their C
loop, libsodium, the kernel's UDP, TAP and checksum work).

    python3 -m bench.profile                 # 8 s at 0% loss
    python3 -m bench.profile --loss 1 --secs 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from meshrouter.testing import release
from meshrouter.testing.netlab import Lab

from .run import PREFIX, iperf, setup_mesh

SYSCALLS = ("recvmsg", "sendmsg", "write", "read", "epoll_wait", "recvmmsg", "sendmmsg")
FORWARDER = "run from meshro"  # the forwarder thread's name, as the kernel keeps it (15 chars)


def report(data: Path, *args: str, lines: int) -> str:
    out = subprocess.run(
        [
            "perf",
            "report",
            "-i",
            str(data),
            "--stdio",
            "--no-children",
            "--percent-limit",
            "0.5",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    rows = [x for x in out.splitlines() if x.strip() and not x.startswith("#")]
    return "\n".join(rows[:lines])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--secs", type=int, default=8)
    ap.add_argument("--loss", type=float, default=0.0, metavar="PCT")
    ap.add_argument("--mesh-opts", default="", metavar="'OPTS'")
    ap.add_argument("--veth", action="store_true", help="the bench's plain veth, not a wire")
    ap.add_argument("--baseline", metavar="REV", help="profile meshrouter as of commit REV instead")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("perf"):
        print("bench.profile: run as root, with perf installed (apt-get install linux-perf)")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="meshprof-"))
    data = tmp / "perf.data"
    base = release.build(args.baseline) if args.baseline else None
    if base is not None:
        lab = Lab(PREFIX + "f", 2, python=base.python, repo=base.repo).create()
    else:
        lab = Lab(PREFIX + "f", 2).create()
    try:
        a, b, ip = setup_mesh(lab, tuple(args.mesh_opts.split()))
        lab.wait_for(
            "mesh path up",
            lambda: lab.in_ns(a, "ping", "-c1", "-W1", ip, check=False).returncode == 0,
            timeout=60,
        )
        if not args.veth:
            lab.wire()
        lab.lossy(args.loss)
        perf = subprocess.Popen(
            [
                "perf",
                "record",
                "-a",
                "-g",
                "-F",
                "999",
                "-o",
                str(data),
                "--",
                "sleep",
                str(args.secs + 1),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        j = iperf(lab, a, b, ip, secs=args.secs)
        perf.wait(timeout=60)
        end = j.get("end", {})
        bps = end.get("sum_received", {}).get("bits_per_second", 0) if isinstance(end, dict) else 0
        where = "a veth" if args.veth else "a wire"
        print(f"TCP x1 on {where} at {args.loss:g}% loss: {bps / 1e9:.2f} Gbit/s\n")
        print("samples by command and object:")
        print(report(data, "--sort", "comm,dso", "-g", "none", lines=25))
        print(f"\nthe forwarder threads' system calls, with all they cause (comm {FORWARDER!r}):")
        calls = report(
            data, "--children", "--comms", FORWARDER, "--sort", "symbol", "-g", "none", lines=400
        )
        for line in calls.splitlines():
            if any(f"[k] __x64_sys_{c}" in line or f"[k] __sys_{c}" in line for c in SYSCALLS):
                print(line)
        print(f"\nthe forwarder threads' hottest symbols (comm {FORWARDER!r}, both routers):")
        print(report(data, "--comms", FORWARDER, "--sort", "dso,symbol", "-g", "none", lines=40))
    finally:
        lab.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
