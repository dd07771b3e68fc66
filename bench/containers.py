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
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.run import iperf
from bench.scale import rss_mib
from meshrouter.contract import apiclient
from meshrouter.contract import requests as rq
from meshrouter.host import guard
from meshrouter.testing.netlab import Lab


def timed(fn: object, *args: object) -> float:
    t = time.monotonic()
    fn(*args)  # type: ignore[operator]
    return time.monotonic() - t


@dataclass
class FakePort:
    host_veth: str
    mac: str
    cidrs: list[str]
    guard: bool = True
    cidrs6: list[str] = field(default_factory=list)


def chain_per_port(ports: list[FakePort]) -> str:
    """The table as it was before issue 27 (a chain per port, every frame
    jumping through each), for the comparison: its IPv4 rules only."""
    lines = [f"table bridge {guard.TABLE}", f"delete table bridge {guard.TABLE}"]
    lines.append(f"table bridge {guard.TABLE} {{")
    for p in ports:
        v, m, ip = p.host_veth, p.mac, p.cidrs[0].split("/")[0]
        lines += [
            f"  chain port_{v} {{",
            f'    iifname "{v}" ether saddr != {m} counter drop',
            f'    iifname != "{v}" ether saddr {m} counter drop',
            f'    iifname "{v}" ip saddr != {ip} counter drop',
            f'    iifname != "{v}" ip saddr {ip} counter drop',
            "  }",
        ]
    for hook in ("forward", "input"):
        lines.append(f"  chain {hook} {{ type filter hook {hook} priority -10; policy accept;")
        lines += [f"    jump port_{p.host_veth}" for p in ports]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def guard_cost(lab: Lab, c1: str, c2: str, ip2: str, extra: int, secs: int) -> dict[str, float]:
    """One TCP stream between two containers of this host (it crosses the
    bridge, so the guard's forward hook), with the table holding their two
    ports, then ``extra`` more (as sets, and as a chain per port)."""
    recs = json.loads(lab.mesh(1, "ps", "--json").stdout)
    real = [FakePort(r["host_veth"], r["mac"], r["cidrs"]) for r in recs]
    fake = [
        FakePort(f"vethwf{k:05x}", f"02:ee:00:00:{k >> 8:02x}:{k & 255:02x}", [f"10.47.{k >> 8}.{k & 255}/12"])  # noqa: E501
        for k in range(extra)
    ]  # fmt: skip
    tables = {
        f"{len(real)} ports (sets)": guard.render(real),
        f"{len(real) + extra} ports (sets)": guard.render([*real, *fake]),
        f"{len(real) + extra} ports (a chain each, before)": chain_per_port([*real, *fake]),
    }
    out: dict[str, list[float]] = {k: [] for k in tables}
    for _ in range(2):  # alternating, twice
        for name, text in tables.items():
            subprocess.run(
                ["ip", "netns", "exec", lab.host(1), "nft", "-f", "-"],
                input=text, text=True, check=True, capture_output=True,
            )  # fmt: skip
            j = iperf(lab, c1, c2, ip2, secs=secs)
            bps = j.get("end", {}).get("sum_received", {}).get("bits_per_second", 0.0)
            out[name].append(bps / 1e9)
    subprocess.run(
        ["ip", "netns", "exec", lab.host(1), "nft", "-f", "-"],
        input=guard.render(real), text=True, check=True, capture_output=True,
    )  # fmt: skip
    return {k: statistics.mean(v) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/containers.json"))
    ap.add_argument(
        "--guard-cost",
        type=int,
        metavar="PORTS",
        help="instead: a TCP stream between two containers with PORTS more in the guard table",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root (it builds namespaces)", file=sys.stderr)
        return 1
    if args.guard_cost is not None:
        lab = Lab("mcg", 1).create()
        try:
            lab.launch(1)
            c1, c2 = lab.container("c1"), lab.container("c2")
            lab.mesh(1, "attach", c1)
            ip2 = lab.mesh(1, "attach", c2).stdout.split()[0].split("/")[0]
            cost = guard_cost(lab, c1, c2, ip2, args.guard_cost, secs=5)
        finally:
            lab.close()
        print("anti-spoofing table                         TCP Gbit/s (one stream, mean of 2)")
        for name, gbps in cost.items():
            print(f"{name:44s}{gbps:6.2f}")
        return 0
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
