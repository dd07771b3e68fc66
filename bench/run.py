"""Throughput and latency of meshrouter beside its peers, on one topology, in one run.

Two hosts in network namespaces joined by a veth underlay (198.18.0.0/24), a
container on each host's bridge, and the same traffic through each path:

* underlay: host to host, no tunnel (the ceiling);
* vxlan:    the kernel's VXLAN on a bridge (unencrypted, like Weave's fast datapath);
* tinc:     tinc 1.0 in switch mode (userspace, encrypted L2, the Debian package);
* fastd:    fastd v22 in TAP mode, method salsa2012+umac (userspace, encrypted L2,
            the Debian package; the latency reference among them);
* mesh:     meshrouter (userspace, encrypted L2), its C data-plane loop;
* mesh-py:  the same with --dataplane python (the pure-Python loop: the
            "before" of the C loop, side by side in a lab of its own);
* trusted:  meshrouter with --trusted-subnets covering the underlay: unicast
            on its kernel fast path (VXLAN, unencrypted), in a second lab of
            two hosts so that both meshes run side by side;
* mesh-v6:  meshrouter over an IPv6-only underlay (2001:db8:18::/64), the
            traffic between the containers' IPv6 addresses (--ipalloc-range6):
            IPv6 end to end, in a lab of its own.

For each: iperf3 single TCP stream and 4 streams, UDP at a fixed rate (loss,
jitter), 64-byte UDP (frames per second), ping RTT, and CPU (the machine's
busy share and the tunnel processes' own). Prints a table, the ratios of
mesh to the others and each against its target, writes JSON and a PNG chart.

RTT is the median of pings every 20 ms, taken in rounds that visit every path
in turn (PING_ROUNDS x PING_COUNT each), so that all paths see the machine in
the same state: on a VM a single burst of pings per path swings by +-30%.

    bash bench/run.sh            # full run (about 2 minutes)
    bash bench/run.sh --quick    # shorter tests
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshrouter.host.netdev import veth_args
from meshrouter.testing import release
from meshrouter.testing.netlab import UNDERLAY, Lab, sh, status

PREFIX = "mbench"
PING_ROUNDS = 5
PING_COUNT = 40


@dataclass
class Result:
    path: str
    tcp1_gbps: float = 0.0
    tcp4_gbps: float = 0.0
    udp_loss_pct: float = 0.0
    udp_jitter_ms: float = 0.0
    udp_rate_mbps: float = 0.0
    small_pps: float = 0.0
    rtt_ms: float = 0.0  # median
    rtt_mean_ms: float = 0.0
    cpu_machine_pct: float = 0.0  # of both cores, during the single-stream test
    cpu_tunnel_pct: float = 0.0  # the tunnel's own processes (100 = one core)
    notes: list[str] = field(default_factory=list)


# -- setting up each path ------------------------------------------------------------


def container_on_bridge(lab: Lab, host: int, name: str, bridge: str, cidr: str, mtu: int) -> str:
    ns = lab.container(name)
    veth = f"v{name[-6:]}"
    lab.run(host, "ip", *veth_args(veth, "eth0", mtu, ns))
    lab.run(host, "ip", "link", "set", "dev", veth, "master", bridge, "up")
    lab.in_ns(ns, "ip", "addr", "add", cidr, "dev", "eth0")
    lab.in_ns(ns, "ip", "link", "set", "dev", "eth0", "up")
    return ns


def bridge(lab: Lab, host: int, name: str) -> None:
    lab.run(host, "ip", "link", "add", "name", name, "type", "bridge")
    lab.run(host, "ip", "link", "set", "dev", name, "up")


def setup_vxlan(lab: Lab) -> tuple[str, str, str]:
    for i, j in ((1, 2), (2, 1)):
        bridge(lab, i, "vxbr")
        lab.run(
            i,
            "ip",
            "link",
            "add",
            "name",
            "vx0",
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            "4789",
            "local",
            lab.addr(i),
            "remote",
            lab.addr(j),
            "dev",
            "eth0",
        )
        lab.run(i, "ip", "link", "set", "dev", "vx0", "master", "vxbr", "up")
    a = container_on_bridge(lab, 1, "vx1", "vxbr", "10.40.0.1/24", 1450)
    b = container_on_bridge(lab, 2, "vx2", "vxbr", "10.40.0.2/24", 1450)
    return a, b, "10.40.0.2"


def setup_tinc(lab: Lab) -> tuple[str, str, str, list[subprocess.Popen[bytes]]]:
    confs = {}
    for i in (1, 2):
        d = lab.tmp / f"tinc{i}"
        (d / "hosts").mkdir(parents=True)
        (d / "tinc.conf").write_text(
            f"Name = h{i}\nMode = switch\nAddressFamily = ipv4\nInterface = tinc0\n"
            f"BindToAddress = {lab.addr(i)}\n" + ("ConnectTo = h1\n" if i == 2 else "")
        )
        (d / "hosts" / f"h{i}").write_text(f"Address = {lab.addr(i)}\nPort = 655\n")
        up = d / "tinc-up"
        up.write_text(
            "#!/bin/sh\nip link set dev $INTERFACE master tbr\nip link set dev $INTERFACE up\n"
        )
        up.chmod(0o755)
        subprocess.run(
            ["tincd", "-c", str(d), "-K2048"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
        )
        confs[i] = d
    for i, j in ((1, 2), (2, 1)):  # exchange host files (with public keys)
        shutil.copy(confs[j] / "hosts" / f"h{j}", confs[i] / "hosts" / f"h{j}")
    procs = []
    for i in (1, 2):
        bridge(lab, i, "tbr")
        procs.append(
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    lab.host(i),
                    "tincd",
                    "-c",
                    str(confs[i]),
                    "-D",
                    "--pidfile",
                    str(confs[i] / "pid"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    a = container_on_bridge(lab, 1, "tc1", "tbr", "10.41.0.1/24", 1400)
    b = container_on_bridge(lab, 2, "tc2", "tbr", "10.41.0.2/24", 1400)
    return a, b, "10.41.0.2", procs


def setup_fastd(lab: Lab) -> tuple[str, str, str, list[subprocess.Popen[bytes]]]:
    keys = {}
    for i in (1, 2):
        secret = sh("fastd", "--generate-key", "--machine-readable").stdout.strip()
        public = subprocess.run(
            ["fastd", "--config", "-", "--show-key", "--machine-readable"],
            input=f'secret "{secret}";\n',
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        keys[i] = secret, public
    procs = []
    for i, j in ((1, 2), (2, 1)):
        d = lab.tmp / f"fastd{i}"
        d.mkdir()
        (d / "fastd.conf").write_text(
            f'interface "fd{i}";\nmode tap;\nmethod "salsa2012+umac";\n'
            f'bind {lab.addr(i)}:10000;\nsecret "{keys[i][0]}";\nmtu 1426;\n'
            "log level warn;\nsecure handshakes yes;\n"
            'on up sync "ip link set dev $INTERFACE master fbr && '
            'ip link set dev $INTERFACE up";\n'
            f'peer "h{j}" {{ key "{keys[j][1]}"; remote {lab.addr(j)}:10000; }}\n'
        )
        bridge(lab, i, "fbr")
        procs.append(
            subprocess.Popen(
                ["ip", "netns", "exec", lab.host(i), "fastd", "--config", str(d / "fastd.conf")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    a = container_on_bridge(lab, 1, "fd1c", "fbr", "10.42.0.1/24", 1380)
    b = container_on_bridge(lab, 2, "fd2c", "fbr", "10.42.0.2/24", 1380)
    return a, b, "10.42.0.2", procs


def setup_mesh(lab: Lab, opts: tuple[str, ...] = (), six: bool = False) -> tuple[str, str, str]:
    if six:
        opts = (*opts, "--ipalloc-range6", "fd32::/64")
    lab.launch(1, extra=opts)
    lab.launch(2, lab.addr(1), extra=opts)
    a, b = lab.container("mc1"), lab.container("mc2")
    lab.mesh(1, "attach", "10.32.0.1/12", a)
    lab.mesh(2, "attach", "10.32.0.2/12", b)
    return a, b, "fd32::2" if six else "10.32.0.2"


# -- measuring -------------------------------------------------------------------------


def rtts(lab: Lab, paths: dict[str, tuple[str, str, str, list[int]]]) -> dict[str, list[float]]:
    """Ping RTTs in ms per path, interleaved in rounds."""
    out: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(PING_ROUNDS):
        for name, (client, _server, ip, _pids) in paths.items():
            r = lab.in_ns(
                client, "ping", "-c", str(PING_COUNT), "-i", "0.02", ip, check=False, timeout=30
            )
            out[name] += [float(t) for t in re.findall(r"time=([\d.]+)", r.stdout)]
    return out


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except (OSError, IndexError):
            pass
    return total


def machine_ticks() -> tuple[int, int]:
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return sum(f) - f[3] - f[4], sum(f)


def iperf(
    lab: Lab, client: str, server: str, server_ip: str, *args: str, secs: int
) -> dict[str, Any]:
    srv = subprocess.Popen(
        ["ip", "netns", "exec", server, "iperf3", "-s", "-1", "-p", "5201"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            if "5201" in lab.in_ns(server, "ss", "-ltn", check=False).stdout:
                break
            time.sleep(0.05)
        r = lab.in_ns(
            client,
            "iperf3",
            "-c",
            server_ip,
            "-p",
            "5201",
            "-t",
            str(secs),
            "-J",
            *args,
            check=False,
            timeout=secs + 30,
        )
    finally:
        try:
            srv.wait(5)
        except subprocess.TimeoutExpired:
            srv.kill()
    try:
        return json.loads(r.stdout)  # type: ignore[no-any-return]
    except ValueError:
        return {"error": r.stderr.strip() or r.stdout[-300:]}


def measure(
    lab: Lab, name: str, client: str, server: str, ip: str, pids: list[int], secs: int
) -> Result:
    res = Result(name)
    busy0, all0 = machine_ticks()
    t0 = cpu_ticks(pids)
    start = time.monotonic()
    j = iperf(lab, client, server, ip, secs=secs)
    wall = time.monotonic() - start
    busy1, all1 = machine_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    res.cpu_machine_pct = 100 * (busy1 - busy0) / max(1, all1 - all0)
    res.cpu_tunnel_pct = 100 * (cpu_ticks(pids) - t0) / hz / wall if pids else 0.0
    res.tcp1_gbps = j.get("end", {}).get("sum_received", {}).get("bits_per_second", 0) / 1e9
    if "error" in j:
        res.notes.append(f"tcp1: {j['error']}")
    j = iperf(lab, client, server, ip, "-P", "4", secs=secs)
    res.tcp4_gbps = j.get("end", {}).get("sum_received", {}).get("bits_per_second", 0) / 1e9
    j = iperf(lab, client, server, ip, "-u", "-b", "500M", "-l", "1200", secs=secs)
    s = j.get("end", {}).get("sum", {})
    res.udp_loss_pct = float(s.get("lost_percent", 0.0))
    res.udp_jitter_ms = float(s.get("jitter_ms", 0.0))
    res.udp_rate_mbps = float(s.get("bits_per_second", 0.0)) / 1e6
    j = iperf(lab, client, server, ip, "-u", "-b", "0", "-l", "64", secs=max(2, secs // 2))
    s = j.get("end", {}).get("sum", {})
    received = float(s.get("packets", 0)) - float(s.get("lost_packets", 0))
    res.small_pps = received / max(1e-9, float(s.get("seconds", 0) or 1))
    return res


# -- report ------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    head = [
        "path",
        "TCP x1 Gbit/s",
        "TCP x4 Gbit/s",
        "UDP 500M loss %",
        "jitter ms",
        "64B UDP kpps",
        "RTT ms (median)",
        "CPU machine %",
        "CPU tunnel %",
    ]
    rows = [
        [
            r.path,
            f"{r.tcp1_gbps:.2f}",
            f"{r.tcp4_gbps:.2f}",
            f"{r.udp_loss_pct:.2f}",
            f"{r.udp_jitter_ms:.3f}",
            f"{r.small_pps / 1000:.1f}",
            f"{r.rtt_ms:.3f}",
            f"{r.cpu_machine_pct:.0f}",
            f"{r.cpu_tunnel_pct:.0f}" if r.cpu_tunnel_pct else "-",
        ]
        for r in results
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = [
        "  ".join(
            x.rjust(w) if k else x.ljust(w)
            for k, (x, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [head, *rows]
    ]
    return "\n".join(lines)


def ratios(by: dict[str, Result]) -> dict[str, float]:
    out = dict[str, float]()
    t, v = by.get("trusted"), by.get("vxlan")
    if t is not None and v is not None and v.tcp1_gbps and v.tcp4_gbps:
        out["trusted/vxlan TCP x1"] = t.tcp1_gbps / v.tcp1_gbps
        out["trusted/vxlan TCP x4"] = t.tcp4_gbps / v.tcp4_gbps
    for name in ("mesh", "mesh-py"):
        m = by.get(name)
        if m is None:
            continue
        for other in ("tinc", "fastd", "vxlan", "underlay"):
            o = by.get(other)
            if o and o.tcp1_gbps:
                out[f"{name}/{other} TCP x1"] = m.tcp1_gbps / o.tcp1_gbps
            if o and o.tcp4_gbps:
                out[f"{name}/{other} TCP x4"] = m.tcp4_gbps / o.tcp4_gbps
            if o and o.rtt_ms and other in ("tinc", "fastd"):
                out[f"{name}/{other} RTT"] = m.rtt_ms / o.rtt_ms
            if o and o.small_pps and other in ("tinc", "fastd"):
                out[f"{name}/{other} 64B pps"] = m.small_pps / o.small_pps
    m, six = by.get("mesh"), by.get("mesh-v6")
    if m is not None and six is not None and m.tcp1_gbps and m.tcp4_gbps:
        out["mesh-v6/mesh TCP x1"] = six.tcp1_gbps / m.tcp1_gbps
        out["mesh-v6/mesh TCP x4"] = six.tcp4_gbps / m.tcp4_gbps
    m, p = by.get("mesh"), by.get("mesh-py")
    if m is not None and p is not None and p.tcp1_gbps and p.tcp4_gbps and m.rtt_ms:
        out["mesh/mesh-py TCP x1"] = m.tcp1_gbps / p.tcp1_gbps
        out["mesh/mesh-py TCP x4"] = m.tcp4_gbps / p.tcp4_gbps
        out["mesh-py/mesh RTT"] = p.rtt_ms / m.rtt_ms
    return out


# Issue 15's targets: (ratio, "<=" or ">=", bound); mesh-py's lines are the
# same targets for the pure-Python loop (the "before").
TARGETS = [
    (f"{name}/{key}", op, bound)
    for name in ("mesh", "mesh-py")
    for key, op, bound in (
        ("tinc RTT", "<=", 1.2),
        ("fastd RTT", "<=", 1.6),
        ("vxlan TCP x1", ">=", 0.4),
        ("vxlan TCP x4", ">=", 0.3),
    )
] + [("trusted/vxlan TCP x1", ">=", 0.9)]


def against_targets(rat: dict[str, float]) -> list[str]:
    lines = []
    for key, op, bound in TARGETS:
        if key not in rat:
            continue
        ok = rat[key] <= bound if op == "<=" else rat[key] >= bound
        lines.append(
            f"{key:22s} {rat[key]:6.2f}x  target {op} {bound}  {'met' if ok else 'NOT met'}"
        )
    return lines


def chart(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.path for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = range(len(names))
    axes[0].bar([i - 0.2 for i in x], [r.tcp1_gbps for r in results], 0.4, label="1 stream")
    axes[0].bar([i + 0.2 for i in x], [r.tcp4_gbps for r in results], 0.4, label="4 streams")
    axes[0].set_xticks(list(x), names)
    axes[0].set_ylabel("Gbit/s")
    axes[0].set_title("TCP throughput, container to container")
    axes[0].legend()
    axes[1].bar(list(x), [r.rtt_ms for r in results], 0.5, color="tab:green")
    axes[1].set_xticks(list(x), names)
    axes[1].set_ylabel("ms")
    axes[1].set_title("ping RTT (median)")
    fig.suptitle("meshrouter vs. underlay, kernel VXLAN, tinc 1.0, fastd (2 cores, namespaces)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


Paths = dict[
    str, tuple[str, str, str, list[int]]
]  # name -> (client ns, server ns, server IP, pids)


def setup_paths(
    lab: Lab,
    only: list[str],
    mesh_opts: str,
    py_lab: Lab | None = None,
    trusted_lab: Lab | None = None,
    v6_lab: Lab | None = None,
) -> Paths:
    """Each path of ``only`` set up in ``lab`` (mesh-py and trusted in labs of
    their own), and up: a ping goes through each."""
    paths: Paths = {}
    if "underlay" in only:
        paths["underlay"] = (lab.host(1), lab.host(2), lab.addr(2), [])
    if "vxlan" in only:
        paths["vxlan"] = (*setup_vxlan(lab), [])
    daemons = (("tinc", "tincd", setup_tinc), ("fastd", "fastd", setup_fastd))
    for name, program, setup in daemons:  # the Debian packages of the same name
        if name not in only:
            continue
        if shutil.which(program):
            a, b, ip, procs = setup(lab)
            paths[name] = (a, b, ip, [p.pid for p in procs])
        else:
            print(f"bench: {program} not installed (apt-get install {name}); skipping {name}")
    if "mesh" in only:
        a, b, ip = setup_mesh(lab, tuple(mesh_opts.split()))
        paths["mesh"] = (a, b, ip, [lab.router_pid(1), lab.router_pid(2)])
    if py_lab is not None:
        a, b, ip = setup_mesh(py_lab, (*mesh_opts.split(), "--dataplane", "python"))
        paths["mesh-py"] = (a, b, ip, [py_lab.router_pid(i) for i in (1, 2)])
    if v6_lab is not None:
        a, b, ip = setup_mesh(v6_lab, tuple(mesh_opts.split()), six=True)
        paths["mesh-v6"] = (a, b, ip, [v6_lab.router_pid(i) for i in (1, 2)])
    if trusted_lab is not None:
        opts = (*mesh_opts.split(), "--trusted-subnets", f"{UNDERLAY}.0/24")
        a, b, ip = setup_mesh(trusted_lab, opts)
        paths["trusted"] = (a, b, ip, [trusted_lab.router_pid(i) for i in (1, 2)])
        trusted_lab.wait_for(
            "trusted pair on the kernel path",
            lambda: all(c.get("path") == "kernel" for c in status(trusted_lab, 1)["connections"]),
            timeout=30,
        )
    for name, (a, _b, ip, _) in paths.items():
        lab.wait_for(
            f"{name} path up",
            lambda a=a, ip=ip: (
                lab.in_ns(  # type: ignore[misc]
                    a, "ping", "-c", "1", "-W", "1", ip, check=False
                ).returncode
                == 0
            ),
            timeout=30,
        )
    return paths


def baseline_path(base_lab: Lab, mesh_opts: str) -> tuple[str, str, str, list[int]]:
    """meshrouter of another commit (``base_lab`` runs it), up and pinging."""
    a, b, ip = setup_mesh(base_lab, tuple(mesh_opts.split()))
    base_lab.wait_for(
        "the baseline's path up",
        lambda: base_lab.in_ns(a, "ping", "-c1", "-W1", ip, check=False).returncode == 0,
        timeout=60,
    )
    return a, b, ip, [base_lab.router_pid(1), base_lab.router_pid(2)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3-second tests instead of 8")
    ap.add_argument("--out", type=Path, default=Path("bench/results"), help="where JSON and PNG go")
    ap.add_argument(
        "--only",
        nargs="*",
        default=["underlay", "vxlan", "tinc", "fastd", "mesh", "mesh-py", "trusted", "mesh-v6"],
        choices=["underlay", "vxlan", "tinc", "fastd", "mesh", "mesh-py", "trusted", "mesh-v6"],
    )
    ap.add_argument(
        "--mesh-opts",
        default="",
        metavar="'OPTS'",
        help="more router options for meshrouter's path, e.g. '--busy-poll-us 300'",
    )
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
    args.out.mkdir(parents=True, exist_ok=True)
    lab = Lab(PREFIX, 2)
    lab.create()
    trusted_lab = Lab(PREFIX + "t", 2) if "trusted" in args.only else None
    if trusted_lab is not None:
        trusted_lab.create()
    py_lab = Lab(PREFIX + "p", 2) if "mesh-py" in args.only else None
    if py_lab is not None:
        py_lab.create()
    v6_lab = Lab(PREFIX + "6", 2, underlay="6") if "mesh-v6" in args.only else None
    if v6_lab is not None:
        v6_lab.create()
    base = release.build(args.baseline) if args.baseline else None
    base_lab = None
    results: list[Result] = []
    try:
        paths = setup_paths(lab, args.only, args.mesh_opts, py_lab, trusted_lab, v6_lab)
        if base is not None:
            base_lab = Lab(PREFIX + "o", 2, python=base.python, repo=base.repo).create()
            paths[f"mesh@{args.baseline}"] = baseline_path(base_lab, args.mesh_opts)
        print("measuring RTT of every path, interleaved ...", flush=True)
        pings = rtts(lab, paths)
        for name, (a, b, ip, pids) in paths.items():
            if name in ("tinc", "fastd"):  # run under 'ip netns exec': find the daemons
                comm = "tincd" if name == "tinc" else "fastd"
                pids = [
                    int(p)
                    for i in (1, 2)
                    for p in sh("ip", "netns", "pids", lab.host(i)).stdout.split()
                    if comm in Path(f"/proc/{p}/comm").read_text()
                ]
            print(f"measuring {name} ...", flush=True)
            res = measure(lab, name, a, b, ip, pids, secs)
            if pings[name]:
                res.rtt_ms = statistics.median(pings[name])
                res.rtt_mean_ms = statistics.mean(pings[name])
            else:
                res.notes.append("ping failed")
            results.append(res)
    finally:
        lab.close()
        for extra in (trusted_lab, py_lab, v6_lab, base_lab):
            if extra is not None:
                extra.close()
    by = {r.path: r for r in results}
    rat = ratios(by)
    print()
    print(table(results))
    print()
    for k, v in rat.items():
        print(f"{k:22s} {v:6.2f}x")
    print()
    for line in against_targets(rat):
        print(line)
    for r in results:
        for note in r.notes:
            print(f"note: {r.path}: {note}")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    info = {
        "when": stamp,
        "cores": os.cpu_count(),
        "seconds_per_test": secs,
        "mesh_opts": args.mesh_opts,
        "results": [asdict(r) for r in results],
        "ratios": rat,
    }
    (args.out / "bench.json").write_text(json.dumps(info, indent=2))
    chart(results, args.out / "bench.png")
    print(f"\nwrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
