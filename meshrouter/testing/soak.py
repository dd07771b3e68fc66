"""Churn soak (issue 23, part 5): containers come and go for a while on two
lab hosts, each with its own router, dockerd and podman; what the routers
and the hosts hold is counted before and after, and the mesh's addresses
are checked for one held twice at every sample.

Three kinds of churn, each bounded in count and in time, run on both hosts
at once (a worker per host):

* **docker**: ``docker run --network none``, ``mesh attach NAME``,
  ``docker stop``, ``docker start`` (attached again by the router, same
  address), ``docker restart`` (again), ``docker rm -f``;
* **cni**: ``podman run --rm --network mesh ... true``: one CNI ADD and DEL;
* **netns**: ``ip netns add``, ``mesh attach``, ``mesh detach``, ``ip netns del``.

``bench/soak.py`` runs the full counts and prints the table; the tests run a
short one and hold it to ``flat()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from meshrouter.testing.engines import Dockerd, Podman
from meshrouter.testing.netlab import NO_UPSTREAM, Lab, full_mesh, sh, status

DOCKER_IMAGE = "local/meshtest:1"
PODMAN_IMAGE = "localhost/meshtest:1"
REATTACH_TIMEOUT = 30.0

# What is counted, in the table's order, with how it is shown.
COUNTS = {
    "rss_kib": "router RSS (KiB)",
    "fds": "router open fds",
    "threads": "router threads",
    "tasks": "router trio tasks",
    "veths": "veths on the host",
    "nft_chains": "nftables chains on the host",
    "ipam": "IPAM entries",
    "dns": "DNS entries",
    "records": "attachment records",
    "processes": "processes in the host's netns",
}


@dataclass
class Churn:
    docker: int = 300
    cni: int = 200
    netns: int = 200
    seconds: float = 1800.0  # for all three together; each kind gets its share

    def share(self, kind: str) -> float:
        total = self.docker + self.cni + self.netns
        return self.seconds * getattr(self, kind) / total if total else 0.0


@dataclass
class Result:
    before: dict[int, dict[str, int]]
    after: dict[int, dict[str, int]]
    done: dict[str, int] = field(default_factory=dict)  # cycles run, per kind
    elapsed: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    held_twice: list[str] = field(default_factory=list)  # what a sample found held twice

    def table(self) -> str:
        hosts = sorted(self.before)
        head = f"{'':32}" + "".join(f"{f'h{i} before':>12}{f'h{i} after':>12}" for i in hosts)
        rows = [head]
        for key, label in COUNTS.items():
            cells = "".join(f"{self.before[i][key]:>12}{self.after[i][key]:>12}" for i in hosts)
            rows.append(f"{label:32}{cells}")
        return "\n".join(rows)

    def summary(self) -> str:
        kinds = ", ".join(
            f"{self.done.get(k, 0)} {k} cycles in {self.elapsed.get(k, 0.0):.0f} s"
            for k in ("docker", "cni", "netns")
        )
        twice = "none" if not self.held_twice else "; ".join(self.held_twice[:5])
        return f"{kinds}\naddresses held twice at any of {self.samples} samples: {twice}"


def flat(result: Result, rss_slack_kib: int = 20 * 1024) -> list[str]:
    """What grew (or shrank) that should not have: empty when all is flat.
    Fds and tasks may differ by the odd one in flight, threads may fall (an
    idle worker exits), RSS may grow by ``rss_slack_kib``; the rest is equal."""
    out = []
    for i, b in result.before.items():
        a = result.after[i]
        for key in COUNTS:
            ok = {
                "rss_kib": a[key] <= b[key] + rss_slack_kib,
                "fds": a[key] <= b[key] + 2,
                "tasks": a[key] <= b[key] + 2,
                "threads": a[key] <= b[key] + 1,
            }.get(key, a[key] == b[key])
            if not ok:
                out.append(f"h{i} {COUNTS[key]}: {b[key]} before, {a[key]} after")
    out += [f"held twice: {x}" for x in result.held_twice]
    return out


def _proc_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


class Soak:
    """Two lab hosts, each with a router, a dockerd in its namespace and a
    podman whose CNI network is the mesh."""

    def __init__(self, lab: Lab, rootfs_tar: Path, podman_root: Path | None = None) -> None:
        self.lab = lab
        self.rootfs = rootfs_tar
        self.engines: dict[int, Dockerd] = {}
        self._own_podman = podman_root is None
        self.podman_root = podman_root or lab.tmp / "podman"
        self.podman: Podman | None = None
        self._lock = threading.Lock()
        self.samples = 0
        self.held_twice: list[str] = []

    # -- set up and tear down ---------------------------------------------

    def start(self) -> Soak:
        lab = self.lab
        if self._own_podman:
            self.podman = Podman.create(self.podman_root, self.rootfs, PODMAN_IMAGE)
        else:
            self.podman = Podman(self.podman_root)

        def engine(i: int) -> None:
            made = Dockerd(lab.tmp / f"dockerd-h{i}", netns=lab.host(i))
            self.engines[i] = made
            made.start().docker("import", str(self.rootfs), DOCKER_IMAGE, timeout=300)

        with ThreadPoolExecutor(2) as pool:  # both at once: each import takes a while
            for f in [pool.submit(engine, i) for i in (1, 2)]:
                f.result()
        for i in (1, 2):
            peers = () if i == 1 else (lab.addr(1),)
            self.mesh(i, "launch", "--password-file", str(lab.password_file),
                      "--dns-upstream", NO_UPSTREAM, *peers)  # fmt: skip
            self.podman.setup_cni(lab, i)
        lab.wait_for("full mesh", lambda: full_mesh(lab, 2), timeout=30)
        return self

    def close(self) -> None:
        if self.podman is not None:
            for i in (1, 2):
                self.podman.remove_all(self.lab, i)
        for engine in self.engines.values():
            engine.stop()
        if self.podman is not None and self._own_podman:
            self.podman.destroy()

    def __enter__(self) -> Soak:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands ---------------------------------------------------------

    def env(self, i: int) -> dict[str, str]:
        assert self.podman is not None
        penv = self.podman.env(self.lab, i)
        return {
            "DOCKER_HOST": self.engines[i].host,
            "CONTAINERS_CONF": penv["CONTAINERS_CONF"],
            "CONTAINERS_STORAGE_CONF": penv["CONTAINERS_STORAGE_CONF"],
        }

    def mesh(self, i: int, *args: str, check: bool = True) -> str:
        out = self.lab.mesh(i, *args, env=self.env(i), engines=True, check=check, timeout=120)
        return out.stdout.strip()

    def docker(self, i: int, *args: str) -> str:
        return self.engines[i].docker(*args).stdout.strip()

    def _ethwe_has(self, i: int, name: str, cidr: str) -> bool:
        pid = self.engines[i].docker("inspect", "--format", "{{.State.Pid}}", name, check=False)
        if pid.returncode != 0 or pid.stdout.strip() in ("", "0"):
            return False
        out = sh("nsenter", "-t", pid.stdout.strip(), "-n", "ip", "-br", "addr", check=False)
        return cidr in out.stdout

    # -- measuring --------------------------------------------------------

    def measure(self, i: int) -> dict[str, int]:
        lab = self.lab
        pid = lab.router_pid(i)
        st = status(lab, i)
        veths = lab.run(i, "ip", "-o", "link", "show", "type", "veth").stdout
        chains = lab.run(i, "nft", "list", "chains").stdout
        records_file = lab.state_dir(i) / "attachments.json"
        records = json.loads(records_file.read_text()) if records_file.exists() else {}
        pids = sh("ip", "netns", "pids", lab.host(i), check=False).stdout.split()
        return {
            "rss_kib": _proc_field(pid, "VmRSS"),
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": _proc_field(pid, "Threads"),
            "tasks": int(st["tasks"]),
            "veths": len(veths.splitlines()),
            "nft_chains": sum(ln.strip().startswith("chain ") for ln in chains.splitlines()),
            "ipam": len(st["ipam"]["allocations"]),
            "dns": len(st["dns"]["entries"]),
            "records": len(records),
            "processes": len(pids),
        }

    def sample(self) -> None:
        """The addresses recorded on both hosts at this moment (a record is
        on disk before its link is made, and goes after its link): none
        recorded twice, for two containers or on two hosts."""
        held: dict[str, str] = {}
        for i in (1, 2):
            path = self.lab.state_dir(i) / "attachments.json"
            try:
                records = json.loads(path.read_text())
            except (OSError, ValueError):
                records = {}
            for key, rec in records.items():
                for cidr in rec.get("cidrs", []):
                    who = f"h{i}:{key[:24]}"
                    other = held.setdefault(cidr.split("/")[0], who)
                    if other != who:
                        with self._lock:
                            self.held_twice.append(f"{cidr} by {other} and {who}")
        with self._lock:
            self.samples += 1

    def settle(self, baseline: dict[int, dict[str, int]] | None, timeout: float = 60) -> None:
        """Wait until what churn left behind is gone (records, addresses and
        names of removed containers go within a few of the router's looks):
        back to ``baseline``, or (for the baseline itself) no record left and
        two looks alike.  What stays is the host's own (``mesh setup-cni``
        exposes the host: an address and a name each)."""
        keys = ("ipam", "dns", "records", "veths", "processes")
        deadline = time.monotonic() + timeout
        last: list[int] = []
        while time.monotonic() < deadline:
            now = {i: self.measure(i) for i in (1, 2)}
            held = [now[i][k] for i in (1, 2) for k in keys]
            if baseline is not None:
                if held == [baseline[i][k] for i in (1, 2) for k in keys]:
                    break
            elif all(now[i]["records"] == 0 for i in (1, 2)) and held == last:
                break  # no container left attached, and nothing changing
            last = held
            time.sleep(1)
        time.sleep(1.5)  # idle worker threads and tasks wind down

    # -- churn ------------------------------------------------------------

    def docker_cycle(self, i: int, k: int) -> None:
        name = f"{self.lab.prefix}-d{k}"
        self.docker(i, "run", "-d", "--name", name, "--network", "none", DOCKER_IMAGE,
                    "sleep", "600")  # fmt: skip
        try:
            cidr = self.mesh(i, "attach", name)
            self.docker(i, "stop", "-t", "0", name)
            if k % 4 == 0:
                self.sample()
            self.docker(i, "start", name)
            self.lab.wait_for(
                f"{name} attached after start",
                lambda: self._ethwe_has(i, name, cidr),
                timeout=REATTACH_TIMEOUT,
            )
            self.docker(i, "restart", "-t", "0", name)
            self.lab.wait_for(
                f"{name} attached after restart",
                lambda: self._ethwe_has(i, name, cidr),
                timeout=REATTACH_TIMEOUT,
            )
        finally:
            self.engines[i].docker("rm", "-f", name, check=False)

    def cni_cycle(self, i: int, k: int) -> None:
        assert self.podman is not None
        self.podman(self.lab, i, "run", "--rm", "--network", "mesh", "--name",
                    f"{self.lab.prefix}-p{k}", PODMAN_IMAGE, "true")  # fmt: skip
        if k % 10 == 0:
            self.sample()

    def netns_cycle(self, i: int, k: int) -> None:
        ns = f"{self.lab.prefix}-n{k}"
        sh("ip", "netns", "add", ns)
        try:
            self.mesh(i, "attach", ns)
            if k % 10 == 0:
                self.sample()
            self.mesh(i, "detach", ns)
        finally:
            sh("ip", "netns", "del", ns, check=False)

    def churn(self, kind: str, count: int, seconds: float) -> tuple[int, float]:
        """``count`` cycles of ``kind``, alternating between the hosts, two at
        a time (one per host), until done or ``seconds`` are up."""
        cycle = {"docker": self.docker_cycle, "cni": self.cni_cycle, "netns": self.netns_cycle}
        run = cycle[kind]
        t0 = time.monotonic()
        deadline = t0 + seconds
        done = [0, 0]

        def worker(i: int) -> None:
            for k in range(i - 1, count, 2):
                if time.monotonic() > deadline:
                    return
                run(i, k)
                done[i - 1] += 1

        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(worker, i) for i in (1, 2)]:
                f.result()
        return sum(done), time.monotonic() - t0

    def run(self, plan: Churn, log: Callable[[str], None] = lambda s: None) -> Result:
        # Warm up: one cycle of each, so that what is made once (tables,
        # chains, the plugin's first call, worker threads) is in the baseline.
        for kind in ("docker", "cni", "netns"):
            if getattr(plan, kind):
                getattr(self, f"{kind}_cycle")(1, 10_000)
                getattr(self, f"{kind}_cycle")(2, 10_001)
        self.settle(None)
        before = {i: self.measure(i) for i in (1, 2)}
        result = Result(before, before)
        for kind in ("docker", "cni", "netns"):
            count = getattr(plan, kind)
            if not count:
                continue
            log(f"{kind}: {count} cycles")
            result.done[kind], result.elapsed[kind] = self.churn(kind, count, plan.share(kind))
        self.settle(before)
        result.after = {i: self.measure(i) for i in (1, 2)}
        result.samples, result.held_twice = self.samples, list(self.held_twice)
        return result


@contextlib.contextmanager
def soak_lab(prefix: str, rootfs_tar: Path, podman_root: Path | None = None) -> Iterator[Soak]:
    """A two-host lab with the soak's engines, all torn down after."""
    with Lab(prefix, 2) as lab, Soak(lab, rootfs_tar, podman_root) as soak:
        yield soak
