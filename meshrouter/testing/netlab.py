"""A lab of "hosts" in network namespaces on one machine, for tests, the demo and benchmarks.

Layout for prefix P and n hosts::

    P-sw (netns): bridge br0 -- veth -- P-h1 (netns): eth0 192.0.2.1/24
                             -- veth -- P-h2 (netns): eth0 192.0.2.2/24 ...

Containers are more namespaces (P-cN) that ``mesh attach`` wires to a host's
bridge.  Nothing is added to the root namespace: no addresses, no routes; all
traffic stays between namespaces the lab made.  ``close()`` kills every
process inside them and deletes them, and is safe to call twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from meshrouter.contract.status import RouterStatus
from meshrouter.host.netdev import veth_args

REPO = Path(__file__).resolve().parents[2]
UNDERLAY = "198.18.0"  # benchmarking range (RFC 2544), only ever inside the lab namespaces
UNDERLAY6 = "2001:db8:18"  # the documentation prefix (RFC 3849), likewise: 2001:db8:18::I/64
NO_UPSTREAM = f"{UNDERLAY}.254"  # a DNS upstream inside the lab that never answers
NETNS_ETC = Path("/etc/netns")


def sh(
    *args: str, check: bool = True, timeout: float = 60, **kw: object
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, check=False, **kw
    )  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc  # type: ignore[no-any-return]


class Lab:
    def __init__(
        self,
        prefix: str,
        hosts: int = 2,
        password: str = "lab-secret-password",
        *,
        python: str = sys.executable,
        repo: Path = REPO,
        underlay: str | dict[int, str] = "4",
        nat: dict[int, str] | None = None,
        symmetric: frozenset[str] = frozenset(),
        forward: dict[str, int] | None = None,
    ) -> None:
        """``python`` and ``repo``: the interpreter (and its installed
        meshrouter) and the checkout whose ``mesh`` the hosts run; another
        release's (``release.build``) for a mesh of mixed versions.
        ``underlay``: the families of the hosts' underlay addresses, "4",
        "6" or "46" (dual-stack), for all hosts or per host."""
        self.underlay = underlay
        # Hosts behind NAT boxes: host -> box name (one letter); the boxes
        # masquerade onto the switch (endpoint-independent, as most home and
        # cloud NATs; ``symmetric`` ones pick a random port per flow) and let
        # in only what answers a flow from inside.
        self.nat = dict(nat or {})
        self.symmetric = symmetric
        # NAT boxes that forward TCP and UDP 6783 on their public address to
        # one of their hosts (a port forward): box name -> host.
        self.forward = dict(forward or {})
        self.boxes = sorted(set(self.nat.values()))
        self.python = python
        self.repo = repo
        self.versions: dict[int, tuple[str, Path]] = {}  # host -> (python, repo) of another one
        if len(prefix) > 8:
            raise ValueError("prefix must be at most 8 characters (interface names are short)")
        self.prefix = prefix
        self.n = hosts
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        self.password_file = self.tmp / "password"
        self.password_file.write_text(password + "\n")
        self.password_file.chmod(0o600)
        self.containers: list[str] = []
        self.switch = f"{prefix}-sw"
        self._made: list[str] = []
        self._relays: list[subprocess.Popen[str]] = []

    # -- names ----------------------------------------------------------

    def host(self, i: int) -> str:
        return f"{self.prefix}-h{i}"

    def families(self, i: int) -> str:
        """Host i's underlay families: "4", "6" or "46"."""
        return self.underlay if isinstance(self.underlay, str) else self.underlay.get(i, "4")

    def box(self, name: str) -> str:
        return f"{self.prefix}-n{name}"

    def public(self, name: str) -> str:
        """A NAT box's address on the switch (its hosts' public address)."""
        return f"{UNDERLAY}.{200 + self.boxes.index(name)}"

    def addr(self, i: int, family: int | None = None) -> str:
        """Host i's underlay address: of ``family`` (4 or 6), else its IPv4
        one if it has one, else its IPv6 one; behind a NAT, its private one."""
        if i in self.nat:
            return f"10.99.{self.boxes.index(self.nat[i]) + 1}.{i}"
        if family == 6 or (family is None and "4" not in self.families(i)):
            return f"{UNDERLAY6}::{i}"
        return f"{UNDERLAY}.{i}"

    def peer(self, i: int, family: int | None = None) -> str:
        """Host i's address as ``mesh launch`` and ``connect`` take it: [v6]:port for IPv6."""
        a = self.addr(i, family)
        return f"[{a}]:6783" if ":" in a else a

    def state_dir(self, i: int) -> Path:
        return self.tmp / f"state-h{i}"

    # -- building -------------------------------------------------------

    def _netns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self._made.append(name)
        sh("ip", "-n", name, "link", "set", "dev", "lo", "up")

    def create(self) -> Lab:
        self.close_stale()
        self._netns(self.switch)
        sh("ip", "-n", self.switch, "link", "add", "name", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "dev", "br0", "up")
        for b in self.boxes:
            self._nat_box(b)
        for i in range(1, self.n + 1):
            h = self.host(i)
            self._netns(h)
            if i in self.nat:
                box = self.box(self.nat[i])
                sh("ip", "-n", h, *veth_args("eth0", f"l{i}", netns=box))
                sh("ip", "-n", box, "link", "set", "dev", f"l{i}", "master", "lan", "up")
                sh("ip", "-n", h, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
                sh("ip", "-n", h, "link", "set", "dev", "eth0", "up")
                gw = self.addr(i).rsplit(".", 1)[0] + ".1"
                sh("ip", "-n", h, "route", "add", "default", "via", gw)
                continue
            sh("ip", "-n", h, *veth_args("eth0", f"u{i}", netns=self.switch))
            sh("ip", "-n", self.switch, "link", "set", "dev", f"u{i}", "master", "br0", "up")
            fams = self.families(i)
            if "4" in fams:
                sh("ip", "-n", h, "addr", "add", f"{self.addr(i, 4)}/24", "dev", "eth0")
            if "6" in fams:  # no duplicate address detection: usable at once
                sh("ip", "-n", h, "addr", "add", f"{self.addr(i, 6)}/64", "dev", "eth0", "nodad")
            sh("ip", "-n", h, "link", "set", "dev", "eth0", "up")
        return self

    def _nat_box(self, name: str) -> None:
        """A home router: 'wan' on the switch, 'lan' a bridge for its hosts,
        masquerade, and nothing in that is not an answer, to its hosts or to
        itself.  (A box that took what comes to its own address would keep a
        conntrack entry for a peer's punching datagram that came before its
        host's own left, and move its host's mapping to another port.)"""
        box, k = self.box(name), self.boxes.index(name) + 1
        self._netns(box)
        sh("ip", "-n", box, *veth_args("wan", f"n{name}", netns=self.switch))
        sh("ip", "-n", self.switch, "link", "set", "dev", f"n{name}", "master", "br0", "up")
        sh("ip", "-n", box, "addr", "add", f"{self.public(name)}/24", "dev", "wan")
        sh("ip", "-n", box, "link", "set", "dev", "wan", "up")
        sh("ip", "-n", box, "link", "add", "name", "lan", "type", "bridge")
        sh("ip", "-n", box, "addr", "add", f"10.99.{k}.1/24", "dev", "lan")
        sh("ip", "-n", box, "link", "set", "dev", "lan", "up")
        sh("ip", "netns", "exec", box, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        how = "masquerade random,fully-random" if name in self.symmetric else "masquerade"
        self._nat_rules(name, how)

    def reboot_nat(self, name: str, ports: str = "") -> None:
        """The NAT box comes back with an empty connection table (every mapping
        gone) and, with ``ports`` ("20000-29999"), maps to other ports."""
        box = self.box(name)
        how = "masquerade"
        if ports:  # a port range needs a protocol; the rest (ICMP) as before
            how = f'meta l4proto {{ tcp, udp }} masquerade to :{ports}\n        oifname "wan" {how}'

        sh("ip", "netns", "exec", box, "nft", "flush", "ruleset")
        self._nat_rules(name, how)
        sh("ip", "netns", "exec", box, sys.executable, "-m", "meshrouter.testing.conntrack")

    def _nat_rules(self, name: str, how: str) -> None:
        box = self.box(name)
        dnat = accept = ""
        if name in self.forward:
            to = self.addr(self.forward[name])
            dnat = f"""
    chain c_pre {{
        type nat hook prerouting priority dstnat;
        iifname "wan" meta l4proto {{ tcp, udp }} th dport 6783 dnat to {to}
    }}"""
            accept = "\n        ct status dnat accept"
        rules = f"""
table ip nat {{{dnat}
    chain c_post {{
        type nat hook postrouting priority srcnat;
        oifname "wan" {how}
    }}
}}
table ip filter {{
    chain c_forward {{
        type filter hook forward priority 0; policy drop;
        ct state established,related accept{accept}
        iifname "lan" accept
    }}
    chain c_input {{
        type filter hook input priority 0; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" drop
    }}
}}
"""
        subprocess.run(
            ["ip", "netns", "exec", box, "nft", "-f", "-"], input=rules, text=True, check=True
        )

    def wan_bytes(self, i: int) -> int:
        """Bytes in and out of host i's underlay interface."""
        out = self.run(i, "cat", "/sys/class/net/eth0/statistics/rx_bytes").stdout
        out2 = self.run(i, "cat", "/sys/class/net/eth0/statistics/tx_bytes").stdout
        return int(out) + int(out2)

    def container(self, name: str) -> str:
        full = f"{self.prefix}-{name}"
        self._netns(full)
        self.containers.append(full)
        return full

    # -- running --------------------------------------------------------

    def run(
        self, i: int, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.host(i), *args, check=check, timeout=timeout)

    def in_ns(
        self, ns: str, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *args, check=check, timeout=timeout)

    def mesh(
        self,
        i: int,
        *args: str,
        check: bool = True,
        timeout: float = 60,
        env: dict[str, str] | None = None,
        engines: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``mesh ARGS`` on host i (as the installed package, from this repo).
        Container engines on the machine stay out of sight unless ``engines``;
        ``env`` adds to the environment (an engine's socket, a PATH).  A
        launch serves no Docker driver unless ARGS give its socket: never
        into the plugin directory of an engine of the machine's."""
        if args and args[0] == "launch" and "--docker-plugin" not in args:
            args = (args[0], "--docker-plugin", "", *args[1:])
        python, repo = self.versions.get(i, (self.python, self.repo))
        env = dict(
            os.environ,
            MESH_STATE_DIR=str(self.state_dir(i)),
            PYTHONPATH=str(repo),
            **(env or {}),
        )
        if engines:
            env.pop("MESH_NO_DOCKER", None)
        else:
            env["MESH_NO_DOCKER"] = "1"
        return sh(
            "ip",
            "netns",
            "exec",
            self.host(i),
            python,
            "-m",
            "launcher",
            *args,
            check=check,
            timeout=timeout,
            env=env,
            cwd=str(repo),  # a release whose launcher ran "python -m" finds its own package
        )

    def launch(
        self, i: int, *peers: str, extra: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """``mesh launch`` on host i.  Names outside the mesh go to an address
        of the lab's underlay that nobody has, unless ``extra`` says where:
        never to the machine's own resolvers."""
        if "--dns-upstream" not in extra:
            extra = (*extra, "--dns-upstream", NO_UPSTREAM)
        return self.mesh(i, "launch", "--password-file", str(self.password_file), *extra, *peers)

    def block(self, i: int, *others: int, udp_only: bool = False) -> None:
        """Drop traffic between host i and the given hosts (nftables in host i)."""
        proto = " udp dport 6783" if udp_only else ""
        proto_out = " udp dport 6783" if udp_only else ""
        rules = [
            "add table inet meshblock",
            "add chain inet meshblock in { type filter hook input priority 0; }",
            "add chain inet meshblock out { type filter hook output priority 0; }",
        ]
        for o in others:
            rules.append(f"add rule inet meshblock in ip saddr {self.addr(o)}{proto} drop")
            rules.append(f"add rule inet meshblock out ip daddr {self.addr(o)}{proto_out} drop")
        self.run(i, "nft", "; ".join(rules))

    def unblock(self, i: int) -> None:
        self.run(i, "nft", "delete table inet meshblock", check=False)

    # -- a wire instead of a veth ----------------------------------------

    def wire(self) -> None:
        """Every underlay veth (each host's eth0, the switch's ports) segments
        on transmit and coalesces nothing on receive, like a NIC without
        offloads: a UDP GSO send leaves as datagrams, and they arrive one by one."""
        offloads = ("gso", "off", "tso", "off", "gro", "off", "tx-udp-segmentation", "off")
        for i in range(1, self.n + 1):
            self.run(i, "ethtool", "-K", "eth0", *offloads)
            self.in_ns(self.switch, "ethtool", "-K", f"u{i}", *offloads)

    def lossy(self, percent: float) -> None:
        """Drop ``percent`` % of the UDP datagrams arriving at each host, at
        random, after segmentation (nftables; this kernel has no netem).  0
        takes the loss away."""
        permille = round(percent * 10)
        for i in range(1, self.n + 1):
            self.run(i, "nft", "delete table inet lossy", check=False)
            if permille:
                self.run(
                    i,
                    "nft",
                    "add table inet lossy; "
                    "add chain inet lossy i { type filter hook input priority 0; }; "
                    "add rule inet lossy i meta l4proto udp numgen random mod 1000 "
                    f"< {permille} counter drop",
                )

    def impaired(
        self, *, reorder: float = 0.0, duplicate: float = 0.0, delay_ms: float = 0.0, seed: int = 0
    ) -> subprocess.Popen[str]:
        """Hosts 1 and 2 joined by a userspace relay (``impair``) in the
        switch instead of its bridge: the mesh's UDP reordered, duplicated,
        delayed.  Checksums are completed on the hosts (the relay copies
        frames as they are).  Stop it with ``terminate()``; its last line of
        output is what it did (JSON)."""
        for i in (1, 2):
            self.run(i, "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off")
            self.in_ns(self.switch, "ip", "link", "set", "dev", f"u{i}", "nomaster")
            self.in_ns(self.switch, "ethtool", "-K", f"u{i}", "gro", "off", "tx", "off")
        args = ["--reorder", str(reorder), "--duplicate", str(duplicate)]
        args += ["--delay-ms", str(delay_ms), "--seed", str(seed), "--seconds", "300"]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.switch, sys.executable, "-m",
             "meshrouter.testing.impair", "u1", "u2", *args],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )  # fmt: skip
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            raise RuntimeError("the impairment relay did not start")
        self._relays.append(proc)
        return proc

    def lost(self, i: int) -> int:
        """UDP datagrams ``lossy`` has dropped on host i so far."""
        out = self.run(i, "nft", "-j", "list", "table", "inet", "lossy", check=False).stdout
        total = 0
        for item in json.loads(out or "{}").get("nftables", []):
            for expr in item.get("rule", {}).get("expr", []):
                total += expr.get("counter", {}).get("packets", 0)
        return total

    def router_pid(self, i: int) -> int:
        return int((self.state_dir(i) / "router.pid").read_text())

    def wait_for(
        self, what: str, fn: Callable[[], object], timeout: float = 20.0, interval: float = 0.2
    ) -> object:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            last = fn()
            if last:
                return last
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")

    # -- teardown -------------------------------------------------------

    def namespaces(self) -> list[str]:
        out = sh("ip", "netns", "list", check=False).stdout
        return [ln.split()[0] for ln in out.splitlines() if ln.startswith(self.prefix + "-")]

    def close_stale(self) -> None:
        for ns in self.namespaces():
            self._kill_and_delete(ns)

    def _kill_and_delete(self, ns: str) -> None:
        pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGTERM)
        deadline = time.monotonic() + 3
        while pids and time.monotonic() < deadline:
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            time.sleep(0.05)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "netns", "del", ns, check=False)

    def close(self) -> None:
        for proc in self._relays:
            proc.kill()
            proc.wait(timeout=10)
        # Containers first, then hosts (their routers own TAPs), then the switch.
        for ns in sorted(self.namespaces(), key=lambda n: (n.endswith("-sw"), "-h" in n)):
            self._kill_and_delete(ns)
        for etc in NETNS_ETC.glob(f"{self.prefix}-*"):  # resolv.conf files attach wrote
            shutil.rmtree(etc, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Lab:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()


def status(lab: Lab, i: int) -> RouterStatus:
    """``mesh status --json`` of host i."""
    st: RouterStatus = json.loads(lab.mesh(i, "status", "--json").stdout)
    return st


def established(lab: Lab, i: int, n: int = 1) -> bool:
    """True when host i has at least ``n`` established connections."""
    return bool(sum(c["state"] == "established" for c in status(lab, i)["connections"]) >= n)


def full_mesh(lab: Lab, n: int) -> bool:
    """True when each of hosts 1..n has n-1 established connections."""
    for i in range(1, n + 1):
        conns = status(lab, i)["connections"]
        if sum(c["state"] == "established" for c in conns) != n - 1:
            return False
    return True


def star(lab: Lab, n: int, *extra: str) -> None:
    """Launch hosts 1..n, each pointed at host 1, and wait for the full mesh."""
    lab.launch(1, extra=extra)
    for i in range(2, n + 1):
        lab.launch(i, lab.addr(1), extra=extra)
    lab.wait_for("full mesh", lambda: full_mesh(lab, n), timeout=30)


_TCP_SERVER = """
import hashlib, socket, sys
six = sys.argv[1] == "6"
s = socket.socket(socket.AF_INET6 if six else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if six else "0.0.0.0", 5001)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); c.settimeout(60); h = hashlib.sha256(); n = 0
while (b := c.recv(65536)):
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""

_TCP_CLIENT = """
import hashlib, os, socket, sys, time
data = os.urandom(int(sys.argv[2]))
pace = float(sys.argv[3])
s = socket.create_connection((sys.argv[1], 5001), timeout=60)
step = len(data) // 50 if pace else len(data)
for i in range(0, len(data), step):  # paced: the transfer lasts a while
    s.sendall(data[i : i + step]); time.sleep(pace)
s.close()
print(len(data), hashlib.sha256(data).hexdigest())
"""


def tcp_transfer(
    lab: Lab,
    src: str,
    dst: str,
    ip: str,
    size: int,
    pace: float = 0.0,
    during: Callable[[], None] | None = None,
) -> tuple[str, str]:
    """Send ``size`` random bytes over TCP from namespace ``src`` to ``ip`` in
    ``dst`` (in 50 steps ``pace`` seconds apart if pace > 0), calling
    ``during`` meanwhile.  Returns what each end saw: "LENGTH SHA256"."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", dst, sys.executable, "-c", _TCP_SERVER, "6" if ":" in ip else "4"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        args = [ip, str(size), str(pace)]
        client = subprocess.Popen(
            ["ip", "netns", "exec", src, sys.executable, "-c", _TCP_CLIENT, *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        if during is not None:
            during()
        sent, _ = client.communicate(timeout=120)
        got, _ = server.communicate(timeout=120)
    finally:
        server.kill()
    return sent.strip(), got.strip()


@contextlib.contextmanager
def listening(lab: Lab, code: str, namespaces: Sequence[str]) -> Iterator[dict[str, str]]:
    """Run the Python listener ``code`` (it prints "ready" first) in each
    namespace for the ``with`` block; the dict it yields holds what each
    printed, once the block is over (the listeners are killed, also when the
    block fails)."""
    procs = {
        ns: subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            text=True,
        )
        for ns in namespaces
    }
    seen: dict[str, str] = {}
    try:
        for p in procs.values():
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
        yield seen
    finally:
        for ns, p in procs.items():
            p.kill()
            seen[ns], _ = p.communicate()
