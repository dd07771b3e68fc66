"""A local demo: three "hosts" in network namespaces run meshrouter; containers talk across.

python3 -m tools.demo          # build, show, tear down
python3 -m tools.demo --keep   # leave it running to explore; --clean removes it
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from meshrouter.testing.netlab import Lab

PREFIX = "mdemo"


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="leave the demo mesh running")
    ap.add_argument("--clean", action="store_true", help="remove a demo mesh left by --keep")
    args = ap.parse_args()
    lab = Lab(PREFIX, 3)
    if args.clean:
        lab.close_stale()
        print("demo mesh removed")
        return 0
    lab.create()
    try:
        step("Three hosts on an underlay 198.18.0.0/24; each runs 'mesh launch'")
        for i, peers in ((1, ()), (2, (lab.addr(1),)), (3, (lab.addr(1), lab.addr(2)))):
            out = lab.launch(i, *peers).stdout.strip()
            print(f"  {lab.host(i)}$ mesh launch --password-file F {' '.join(peers)}\n    {out}")
        step("Attach one container (a network namespace) per host")
        for i in (1, 2, 3):
            c = lab.container(f"c{i}")
            lab.mesh(i, "attach", f"10.32.0.{i}/12", c)
            print(f"  {lab.host(i)}$ mesh attach 10.32.0.{i}/12 {c}")
        lab.wait_for(
            "connections",
            lambda: all(
                sum(
                    c["state"] == "established"
                    for c in json.loads(lab.mesh(i, "status", "--json").stdout)["connections"]
                )
                == 2
                for i in (1, 2, 3)
            ),
        )
        step(f"mesh status on {lab.host(1)}")
        print(lab.mesh(1, "status").stdout)
        step("Containers ping each other through the encrypted mesh")
        for src, dst in ((1, 2), (2, 3), (3, 1)):
            r = lab.in_ns(f"{PREFIX}-c{src}", "ping", "-c", "3", "-i", "0.2", f"10.32.0.{dst}")
            print(f"  c{src} -> 10.32.0.{dst}: {r.stdout.strip().splitlines()[-1]}")
        step("Names: every attached container is in the mesh's DNS, on every host")
        for src, dst in ((3, 1), (1, 2)):
            name = f"{PREFIX}-c{dst}"
            r = lab.in_ns(f"{PREFIX}-c{src}", "getent", "hosts", name, check=False)
            print(f"  c{src}$ getent hosts {name}\n    {r.stdout.strip() or 'not found'}")
        step(f"{lab.host(1)} joins the mesh itself: mesh expose")
        out = lab.mesh(1, "expose", "--without-masquerade").stdout.strip()
        r = lab.run(1, "ping", "-c", "1", "-W", "2", "10.32.0.3", check=False)
        print(f"  {lab.host(1)}$ mesh expose\n    {out}")
        print(f"  {lab.host(1)}$ ping 10.32.0.3: {'reached' if r.returncode == 0 else 'FAILED'}")
        step("A TCP stream from c1 to c2 (iperf3, 3 seconds)")
        server = f"{PREFIX}-c2"

        srv = subprocess.Popen(
            ["ip", "netns", "exec", server, "iperf3", "-s", "-1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        r = lab.in_ns(f"{PREFIX}-c1", "iperf3", "-c", "10.32.0.2", "-t", "3", "-J", check=False)
        srv.wait(10)
        try:
            bps = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]
            print(f"  {bps / 1e9:.2f} Gbit/s, encrypted")
        except (ValueError, KeyError):
            print(f"  iperf3 failed: {r.stderr.strip() or r.stdout[-200:]}")
        step(f"mesh ps on {lab.host(1)}")
        print(lab.mesh(1, "ps").stdout)
        if args.keep:
            print(f"Left running. Try: ip netns exec {PREFIX}-c1 ping 10.32.0.3")
            print(f"  MESH_STATE_DIR={lab.state_dir(1)} ip netns exec {lab.host(1)} mesh status")
            print("Remove with: python3 -m tools.demo --clean")
            return 0
    except BaseException:
        lab.close()
        raise
    step("Tearing down")
    lab.close()
    print("done: every namespace, veth, bridge and router process removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
