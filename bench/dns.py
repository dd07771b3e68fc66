"""How fast the mesh's DNS answers: a burst of queries over UDP with a window of
queries in flight, from inside a container.  Prints queries per second,
latency percentiles and how many got no answer (each is sent once).

    python3 -m bench.dns --name web.mesh.local [--count 5000] [--window 64]   (in a container)
    python3 -m bench.dns --lab [--count 5000]     (as root: a one-host lab made and removed)
"""

from __future__ import annotations

import argparse
import select
import socket
import statistics
import time

import dns.message


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", default="169.254.53.53")
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--name", default="")
    p.add_argument("--lab", action="store_true", help="make a lab, run there, remove it")
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--window", type=int, default=64, help="queries in flight at once")
    a = p.parse_args()
    if a.lab:
        return in_lab(a.count, a.window)
    if not a.name:
        p.error("--name is needed (or --lab)")

    base = dns.message.make_query(a.name, "A").to_wire()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.connect((a.server, a.port))
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    answered = sent = 0
    start = time.perf_counter()
    deadline = None
    while answered < a.count:
        while sent < a.count and len(sent_at) < a.window:
            qid = sent % 65536
            s.send(qid.to_bytes(2, "big") + base[2:])
            sent_at[qid] = time.perf_counter()
            sent += 1
        if sent == a.count and deadline is None:
            deadline = time.perf_counter() + 2.0
        if deadline is not None and time.perf_counter() > deadline:
            break
        ready, _, _ = select.select([s], [], [], 0.5)
        if not ready:
            if sent == a.count:
                continue
            break  # the window stalled: what is in flight is lost
        data = s.recv(4096)
        t0 = sent_at.pop(int.from_bytes(data[:2], "big"), None)
        if t0 is not None:
            latencies.append(time.perf_counter() - t0)
            answered += 1
    elapsed = time.perf_counter() - start
    lost = a.count - answered
    lat = sorted(latencies) or [0.0]

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000

    print(
        f"dns: {a.count} queries, window {a.window}: {answered / elapsed:.0f} queries/s, "
        f"latency p50 {pct(0.5):.2f} ms p90 {pct(0.9):.2f} ms p99 {pct(0.99):.2f} ms "
        f"(mean {statistics.fmean(lat) * 1000:.2f} ms), lost {lost}"
    )
    return 0 if lost == 0 else 1


def in_lab(count: int, window: int) -> int:
    import os
    import subprocess
    import sys

    from meshrouter.testing.netlab import REPO, Lab

    with Lab(f"bd{os.getpid() % 10000}", 1) as lab:
        lab.launch(1)
        web, client = lab.container("web"), lab.container("cl")
        lab.mesh(1, "attach", web)
        lab.mesh(1, "attach", client)
        cmd = [sys.executable, "-m", "bench.dns", "--name", f"{web}.mesh.local"]
        cmd += ["--count", str(count), "--window", str(window)]
        return subprocess.run(["ip", "netns", "exec", client, *cmd], cwd=REPO).returncode


if __name__ == "__main__":
    raise SystemExit(main())
