"""No single input stops the router: every interface fuzzed against live routers
in namespaces, then the mesh must still answer and forward.  Also: the router
runs the installed code whatever the working directory, start-up tells the
truth, and attach/detach are safe to interrupt."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshrouter.dataplane.link import DROP_REASONS
from meshrouter.testing.netlab import NO_UPSTREAM, Lab, established, status

pytestmark = pytest.mark.netns

LabFactory = Callable[..., Lab]
OPS = [  # every op a client may send, but those that stop or re-key the mesh on purpose
    "status", "connect", "forget", "allocate", "claim", "release", "holder", "ipam",
    "rmpeer", "dns", "dns_add", "dns_remove", "dns_lookup", "expose", "ping", "fly", "",
]  # fmt: skip
NASTY_HOSTS = [
    "node1..example.com", "x" * 64 + ".example.com", "nöde.example.com", "-a-.example",
    "[::1", "h:0", "h:99999", ":::", "a" * 300, "\x00", "é", "..", "",
]  # fmt: skip


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([0, -1, 2**70, 1.5e308, True])
    if kind == 2:
        return rng.choice(NASTY_HOSTS)
    if kind == 3:
        return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(40)))
    if kind == 4:
        return rng.choice(["10.32.0.9/12", "10.32.0.1", "300.1.1.1/40", "fd00::1/64", "web01"])
    if kind in (5, 6):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["peer", "cidr", "names", "x"]): _value(rng, depth + 1)}


def api_inputs(rng: random.Random, n: int) -> list[bytes]:
    out = [b"[" * 60000, b"{" * 1000, b'{"op":' * 5000, b"\xff\xfe\x00", b"x" * 70000]
    while len(out) < n:
        r = rng.random()
        if r < 0.2:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(300))))
        else:
            req = {"op": rng.choice(OPS)}
            for key in rng.sample(
                ["peer", "container", "ns_path", "subnet", "cidr", "addrs", "address", "names",
                 "name", "addr", "masquerade", "fqdn", "count", "interval"],
                rng.randrange(5),
            ):  # fmt: skip
                req[key] = _value(rng)
            out.append(json.dumps(req).encode())
    return out


def ask_unix(path: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(data + b"\n")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


def plugin_inputs(rng: random.Random, n: int) -> list[bytes]:
    paths = [
        "/Plugin.Activate", "/NetworkDriver.CreateNetwork", "/NetworkDriver.CreateEndpoint",
        "/NetworkDriver.Join", "/IpamDriver.RequestPool", "/IpamDriver.RequestAddress",
        "/IpamDriver.ReleaseAddress", "/NetworkDriver.DeleteEndpoint", "/" + "A" * 300,
    ]  # fmt: skip
    out = []
    for i in range(n):
        if i == 0:
            body = b"[" * 60000
        elif rng.random() < 0.3:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        else:
            key = rng.choice(["NetworkID", "Options", "Interface", "PoolID", "Address"])
            body = json.dumps({key: _value(rng)}).encode()
        method = rng.choice(["POST", "POST", "GET", "PUT"])
        head = f"{method} {rng.choice(paths)} HTTP/1.1\r\nHost: x\r\n"
        if rng.random() < 0.1:
            head += "Content-Length: -5\r\n"
        elif rng.random() < 0.1:
            head += "Content-Length: 99999999999\r\n"
        else:
            head += f"Content-Length: {len(body)}\r\n"
        if rng.random() < 0.05:
            head += "X: " + "y" * 20000 + "\r\n"
        out.append(head.encode() + b"\r\n" + body)
    return out


# Run inside a namespace: garbage at a TCP or UDP port, then one good request.
_NET_FUZZ = r"""
import json, random, socket, sys
mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(7)
sent = 0
for i in range(n):
    data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 1500)))
    if mode == "udp":
        if rng.random() < 0.5 and data:  # a plausible first byte: a known type
            data = bytes([rng.randrange(0, 8)]) + data[1:]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(data, (host, port))
    else:
        if mode == "http" and rng.random() < 0.5:
            data = rng.choice([b"GET /metrics", b"GET / HTTP/1.0\r\n\r\n", b"POST /metrics?" +
                               b"a" * 9000, b"\r\n\r\n", b"GET " + b"/" * 8000])  # fmt: skip
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(data)
                if rng.random() < 0.5:
                    s.shutdown(socket.SHUT_WR)
                    s.settimeout(2)
                    try:
                        s.recv(65536)
                    except (socket.timeout, OSError):
                        pass
        except OSError:
            pass
    sent += 1
print(sent)
"""

_HTTP_GET = (
    "import urllib.request; print(urllib.request.urlopen("
    "'http://127.0.0.1:6782/metrics', timeout=5).read().decode())"
)


def cni_runs(lab: Lab, i: int, rng: random.Random, n: int) -> int:
    """``mesh-cni`` as a runtime runs it, with garbage for stdin and environment:
    every answer is the specification's JSON (or nothing, for a DEL), never a traceback."""
    exe = shutil.which("mesh-cni")
    assert exe is not None, "the package is not installed (pip install -e .)"
    state = str(lab.state_dir(i))
    good_conf = json.dumps(
        {"cniVersion": "1.0.0", "name": "mesh", "type": "mesh-cni", "stateDir": state}
    )
    for k in range(n):
        stdin = [
            b"[" * 60000,
            bytes(rng.randrange(256) for _ in range(rng.randrange(200))),
            good_conf.encode(),
            json.dumps(
                {"cniVersion": _value(rng), "name": _value(rng), "stateDir": state}
            ).encode(),
        ][k % 4]
        env = {"PATH": os.environ["PATH"]}
        for key in ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"):
            if rng.random() < 0.7:
                env[key] = {
                    "CNI_COMMAND": rng.choice(
                        ["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC", "x"]
                    ),
                    "CNI_NETNS": rng.choice(["/nonexistent/ns", "", "relative", "/proc/1/../x"]),
                    "CNI_ARGS": rng.choice(["IP=1.2.3", "K8S_POD_NAME", "=;;=", "IP=10.32.0.77"]),
                }.get(key, str(_value(rng))[:100].replace("\x00", ""))
        r = subprocess.run(
            ["ip", "netns", "exec", lab.host(i), exe], input=stdin, env=env,
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        assert b"Traceback" not in r.stderr + r.stdout, (env, stdin[:100], r.stderr[-500:])
        if r.stdout.strip():
            doc = json.loads(r.stdout)
            assert isinstance(doc, dict)
        else:
            assert r.returncode == 0, (env, r.stderr)
    return n


def ping(lab: Lab, ns: str, ip: str) -> bool:
    r = lab.in_ns(ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", ip, check=False)
    return " 0% packet loss" in r.stdout


def test_no_input_stops_the_router(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    plugin = lab.tmp / "docker" / "plugins" / "mesh.sock"
    plugin.parent.mkdir(parents=True)
    no_engine = {"DOCKER_HOST": f"unix://{lab.tmp}/no-engine.sock"}
    extra = ("--dns-upstream", NO_UPSTREAM, "--docker-plugin", str(plugin))
    pw = str(lab.password_file)
    lab.mesh(1, "launch", "--password-file", pw, *extra, env=no_engine, engines=True)
    lab.launch(2, lab.addr(1))
    c1, c2 = lab.container("c1"), lab.container("c2")
    lab.mesh(1, "attach", "10.32.0.1/12", c1)
    lab.mesh(2, "attach", "10.32.0.2/12", c2)
    lab.wait_for("UDP both ways", lambda: established(lab, 1) and established(lab, 2))
    rng = random.Random(20)
    tried: dict[str, int] = {}

    # The API socket: 400 requests, every op with every kind of wrong field.
    sock = lab.state_dir(1) / "router.sock"
    for data in api_inputs(rng, 400):
        reply = json.loads(ask_unix(sock, data))
        assert reply["ok"] in (True, False)
        if not reply["ok"]:
            assert "\n" not in reply["error"]
    tried["API requests"] = 400
    # 'mesh connect' with host names no resolver takes: refused in one line.
    for host in [h for h in NASTY_HOSTS if "\x00" not in h]:  # no NUL in argv
        r = lab.mesh(1, "connect", host, check=False)
        assert r.returncode in (1, 2)  # refused by the router, or by argparse
        assert r.stderr.startswith("mesh"), r.stderr  # "-a-.example" reads as an option
        assert r.stderr.count("\n") == 1, r.stderr
    tried["target names"] = len(NASTY_HOSTS)
    # The Docker plugin socket: 150 requests (bodies, heads, lengths).
    for data in plugin_inputs(rng, 150):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(plugin))
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
    tried["plugin requests"] = 150
    # The CNI plugin as a runtime runs it.
    tried["CNI runs (stdin and environment)"] = cni_runs(lab, 1, rng, 40)
    # The network: garbage at the metrics port, the mesh's TCP and UDP ports, DNS.
    net = [
        (1, "http", "127.0.0.1", 6782, 150, "metrics connections"),
        (2, "tcp", lab.addr(1), 6783, 60, "control connections (TCP 6783)"),
        (2, "udp", lab.addr(1), 6783, 400, "data datagrams (UDP 6783)"),
    ]
    for host, mode, addr, port, n, what in net:
        r = lab.run(
            host, sys.executable, "-c", _NET_FUZZ, mode, addr, str(port), str(n), timeout=300
        )
        assert int(r.stdout) == n
        tried[what] = n
    # A peer with the password: garbage control messages of every type after
    # a real handshake, crafted TUNNEL ones among them (to h1, through it to h2).
    h2 = status(lab, 2)["name"].replace(":", "")
    fuzz = ("-m", "meshrouter.testing.msgfuzz", lab.addr(1), "6783", pw, h2, "300", "21")
    r = lab.run(2, sys.executable, *fuzz, timeout=120)
    assert r.stdout.startswith("sent 300,"), r.stdout + r.stderr
    tried["control messages of a peer with the password"] = 300
    for mode, n, what in (("udp", 300, "DNS datagrams"), ("tcp", 30, "DNS connections")):
        r = lab.in_ns(c1, sys.executable, "-c", _NET_FUZZ, mode, "169.254.53.53", "53", str(n))
        assert int(r.stdout) == n
        tried[what] = n
    print("fuzzed:", tried)

    # Still running, answering, forwarding, counting.
    st = status(lab, 1)
    assert st["name"]
    assert established(lab, 1)
    assert ping(lab, c1, "10.32.0.2")
    assert set(st["drops"]) <= DROP_REASONS, set(st["drops"]) - DROP_REASONS
    assert st["counters"]["api_bad_requests"] > 50
    assert "api_errors" not in st["counters"], "a bug behind an API request"
    # The crafted TUNNEL messages reached their handler: passed on, or counted.
    tunnel = ("tunnel_relay_dropped", "tunnel_unknown", "tunnel_bytes_relayed")
    assert sum(st["counters"].get(k, 0) for k in tunnel) > 0, st["counters"]
    assert "connection_crashes" not in st["counters"], "a bug behind a control message"
    assert "Traceback" not in (lab.state_dir(1) / "router.err").read_text()
    metrics = lab.run(1, sys.executable, "-c", _HTTP_GET).stdout
    assert "mesh_drops_total" in metrics
    reasons = {
        ln.split('"')[1] for ln in metrics.splitlines() if ln.startswith("mesh_drops_total{")
    }
    assert reasons <= DROP_REASONS
    dns = lab.in_ns(c1, "dig", "+time=2", "+tries=1", "@169.254.53.53", "nope.mesh.local.")
    assert "status: NXDOMAIN" in dns.stdout
    # A saved target no release would take (written by hand, or by an old
    # release) is skipped at start with a warning, never fatal.
    lab.mesh(1, "stop")
    targets = lab.state_dir(1) / "targets.json"
    targets.write_text(json.dumps([*json.loads(targets.read_text()), "node1..example.com"]))
    lab.mesh(1, "launch", "--password-file", pw, *extra, env=no_engine, engines=True)
    lab.wait_for("UDP both ways again", lambda: established(lab, 1))
    assert (
        "skipping connection target 'node1..example.com'"
        in (lab.state_dir(1) / "router.log").read_text()
    )
    # The bridge was made again and the MACs are learnt again: forwarding resumes.
    lab.wait_for("ping after the restart", lambda: ping(lab, c1, "10.32.0.2"), timeout=20)


def test_the_router_runs_the_installed_code_whatever_the_working_directory(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    """A directory with its own launcher/ and meshrouter/ (someone's checkout,
    or a trap): 'mesh launch' from it, as root, runs none of it."""
    lab = lab_factory(1)
    marker = tmp_path / "ran"
    for pkg in ("launcher", "meshrouter"):
        (tmp_path / pkg).mkdir()
        trap = f"open({str(marker)!r}, 'a').write('{pkg}\\n')\n"
        (tmp_path / pkg / "__init__.py").write_text(trap)
        (tmp_path / pkg / "__main__.py").write_text(trap)
    mesh = shutil.which("mesh")
    assert mesh is not None, "the package is not installed (pip install -e .)"
    env = dict(os.environ, MESH_STATE_DIR=str(lab.state_dir(1)), MESH_NO_DOCKER="1")
    env.pop("PYTHONPATH", None)
    r = subprocess.run(
        ["ip", "netns", "exec", lab.host(1), mesh, "launch", "--password-file",
         str(lab.password_file), "--docker-plugin", "", "--dns-upstream", NO_UPSTREAM],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    st = status(lab, 1)
    assert st["dataplane"] == "c"  # the built loop, not a checkout's pure-Python one
    pid = lab.router_pid(1)
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    assert "-I" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1].decode()
    assert not marker.exists(), marker.read_text()


def test_start_up_checks_first_and_tells_this_runs_error(lab_factory: LabFactory) -> None:
    lab = lab_factory(1)
    pw = str(lab.password_file)

    def launch(*args: str, pw_file: str = pw) -> subprocess.CompletedProcess[str]:
        return lab.mesh(
            1, "launch", "--password-file", pw_file, "--dns-upstream", NO_UPSTREAM, *args,
            check=False,
        )  # fmt: skip

    def one_line(r: subprocess.CompletedProcess[str], words: str) -> None:
        assert r.returncode != 0
        assert words in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1, r.stderr

    empty = lab.tmp / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    one_line(launch(pw_file=str(empty)), "is empty")
    one_line(launch(pw_file=str(lab.tmp / "missing")), "cannot read password file")
    one_line(launch("--port", "0"), "--port: must be from 1 to 65535")
    one_line(launch("--mtu", "70000"), "--mtu: must be from 576 to 9000")
    one_line(launch("--bridge", "a/b"), "is not an interface name")
    one_line(launch("--bridge", "eth0"), "eth0 exists and is not a bridge")
    one_line(launch("--listen", "203.0.113.9"), "is not an address of this host")
    one_line(launch("node1..example.com"), "empty label")
    one_line(launch(lab.addr(1)), "is this host itself")
    # Nothing was made by any of them.
    assert "mesh" not in lab.run(1, "ip", "-br", "link").stdout.split()
    # The port taken: found before anything is made.
    blocker = subprocess.Popen(
        ["ip", "netns", "exec", lab.host(1), sys.executable, "-c",
         "import socket, time; s = socket.socket(); s.bind(('0.0.0.0', 6783)); s.listen()\n"
         "print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert blocker.stdout is not None
        assert blocker.stdout.readline().strip() == "ready"
        one_line(launch(), "TCP port 6783 on 0.0.0.0 is in use")
        # The router run by a service manager says it too, in one line, and
        # removes the bridge it made.
        r = lab.mesh(
            1, "router", "--password-file", pw, "--docker-plugin", "", check=False, timeout=30
        )
        assert r.returncode == 1
        assert "router failed: port 6783 on every address (IPv4 or IPv6) is in use" in r.stderr, (
            r.stderr
        )
        assert "Traceback" not in r.stderr
        assert "mesh" not in lab.run(1, "ip", "-br", "link").stdout.split()
    finally:
        blocker.kill()
        blocker.communicate()
    # A failure after the bridge was made (the TAP's name is taken by the
    # underlay's interface): this run's error, and the bridge removed.
    one_line(launch("--tap", "eth0"), "start-up: router failed: cannot open TAP device 'eth0'")
    assert "mesh" not in lab.run(1, "ip", "-br", "link").stdout.split()
    r = launch("--tap", "lo")  # another failure: its own error, not the last run's
    one_line(r, "router exited during start-up")
    assert "eth0" not in r.stderr
    # Stop with nothing running: a success that says so.
    r = lab.mesh(1, "stop", check=False)
    assert r.returncode == 0
    assert "no router is running" in r.stdout
    down = json.loads(lab.mesh(1, "status", "--json", check=False).stdout)
    assert down["running"] is False
    assert "'mesh launch'" in down["error"]
    # A good launch, again (idempotent), connecting to itself refused.
    assert launch().returncode == 0
    again = launch()
    assert again.returncode == 0
    assert "already running with these options" in again.stdout
    one_line(launch("--mtu", "1300"), "with other options: 'mesh stop' first")
    one_line(lab.mesh(1, "connect", lab.addr(1), check=False), "is this router itself")
    assert json.loads(lab.mesh(1, "ps", "--json").stdout) == []


def before_our_code(err: str) -> bool:
    """Whether a signalled mesh process died before the interpreter ran any
    code of ours (Python says so itself: "Fatal Python error: init...");
    otherwise it must have printed no traceback."""
    if err.startswith("Fatal Python error: init"):
        return True
    assert "Traceback" not in err, err
    return False


def attach_command(lab: Lab, ns: str) -> tuple[list[str], dict[str, str]]:
    """``mesh attach NS`` on host 1 as a process of its own (to signal), and its environment."""
    env = dict(
        os.environ,
        MESH_STATE_DIR=str(lab.state_dir(1)),
        MESH_NO_DOCKER="1",
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    return ["ip", "netns", "exec", lab.host(1), sys.executable, "-m", "launcher", "attach", ns], env


def attached_state(lab: Lab, ns: str) -> str:
    """'attached' (record, both veth ends, the address in IPAM), 'gone' (none
    of them), or what is half there."""
    recs = json.loads(lab.mesh(1, "ps", "--json").stdout)
    rec = [r for r in recs if r["container"] == ns]
    inside = "ethwe" in lab.in_ns(ns, "ip", "-br", "link").stdout
    allocs = status(lab, 1)["ipam"]["allocations"]
    held = [a for a in allocs if ns in json.dumps(a)]
    host = "vethwl" in lab.run(1, "ip", "-br", "link").stdout
    parts = (bool(rec), inside, bool(held), host)
    if all(parts) and rec[0]["link"] == "up":
        return "attached"
    if not any(parts):
        return "gone"
    return f"half: record={rec} inside={inside} ipam={held} host_veth={host}"


def test_attach_and_detach_interrupted_at_any_moment(lab_factory: LabFactory) -> None:
    lab = lab_factory(1)
    lab.launch(1)
    c = lab.container("c1")
    lab.mesh(1, "attach", c)  # once, so that IPAM is ready and the code is warm
    lab.mesh(1, "detach", c)
    cmd, env = attach_command(lab, c)
    seen: dict[str, int] = {}
    for delay in [0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2, 0.25, 0.3, 0.5]:
        for sig in (signal.SIGINT, signal.SIGTERM):
            proc = subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            time.sleep(delay)
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=30)
            state = attached_state(lab, c)
            assert state in ("attached", "gone"), (delay, sig, state, out, err)
            if before_our_code(err):
                assert state == "gone"
                state = "interpreter start"
            seen[state] = seen.get(state, 0) + 1
            if state == "attached":
                detach = subprocess.Popen(
                    [*cmd[:-2], "detach", c], env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )  # fmt: skip
                time.sleep(delay / 2)
                detach.send_signal(sig)
                _, err = detach.communicate(timeout=30)
                before_our_code(err)
                state = attached_state(lab, c)
                if state == "attached":  # interrupted before it began: detach again
                    lab.mesh(1, "detach", c)
                    state = attached_state(lab, c)
                assert state == "gone", state
    print("interrupts ended with:", seen)
    assert seen.get("gone"), seen  # both ends were hit
    assert seen.get("attached"), seen


def test_an_attach_waiting_for_ipam_stops_at_once_and_a_killed_one_is_finished(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(1)
    # IPAM waits for 2 of 2 peers: an attach waits with it.
    lab.launch(1, extra=("--ipalloc-init", "2"))
    c = lab.container("c1")
    cmd, env = attach_command(lab, c)
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert time.monotonic() - t0 < 2.0
    assert proc.returncode == 130
    assert "interrupted: nothing was attached" in err
    assert attached_state(lab, c) == "gone"
    lab.mesh(1, "stop")
    # Killed (no signal to catch) while making the veth: the record says so,
    # and 'mesh prune' (or the next attach) finishes the job.
    lab.launch(1)
    lab.mesh(1, "attach", c)
    lab.mesh(1, "detach", c)
    kinds: set[str] = set()
    for delay in (0.05, 0.15, 0.25, 0.35, 0.5, 0.8):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        subprocess.run(["pkill", "-9", "-f", f"launcher attach {c}"], check=False)
        proc.wait(timeout=10)
        recs = json.loads(lab.mesh(1, "ps", "--json").stdout)
        kinds.add(recs[0]["link"] if recs else "none")
        if recs and recs[0]["link"] == "attaching":
            lab.mesh(1, "prune")
        elif recs:
            lab.mesh(1, "detach", c)
        else:  # killed before its record: an allocation may be held; attach reuses it
            lab.mesh(1, "attach", c)
            lab.mesh(1, "detach", c)
        assert attached_state(lab, c) == "gone", (delay, attached_state(lab, c))
    print("after kill -9:", kinds)


def test_mesh_ping_direct_and_through_a_relay(lab_factory: LabFactory) -> None:
    lab = lab_factory(3)
    lab.block(1, 3)
    lab.block(3, 1)
    lab.launch(2)
    lab.launch(1, lab.addr(2))
    lab.launch(3, lab.addr(2))
    lab.wait_for("h2 hears both", lambda: established(lab, 2, 2))

    def h1_reaches_both() -> bool:
        peers = status(lab, 1)["peers"]
        return len(peers) == 3 and all(p["reachable"] for p in peers)

    lab.wait_for("h1's routes to h2 and, through it, h3", h1_reaches_both)
    r = lab.mesh(1, "ping", lab.host(2), "-c", "3")
    lines = r.stdout.splitlines()
    assert len(lines) == 3
    assert all(
        f"pong from {lab.host(2)} (" in ln and f"direct, {lab.addr(2)}:6783" in ln for ln in lines
    )
    res = json.loads(lab.mesh(1, "ping", lab.host(3), "-c", "2", "--json").stdout)
    assert res["nickname"] == lab.host(3)
    assert res["via_nickname"] == lab.host(2)
    assert all(isinstance(x, float) and 0 < x < 1000 for x in res["rtt_ms"])
    r = lab.mesh(1, "ping", "nobody", check=False)
    assert r.returncode == 1
    assert r.stderr == "mesh: no peer named 'nobody' (see 'mesh status peers')\n"


def test_the_systemd_unit_launches_at_boot_idempotently_from_its_config(
    lab_factory: LabFactory,
) -> None:
    """deploy/systemd/meshrouter.service's own commands, with its config file
    (its password file and peers pointed into the lab)."""
    lab = lab_factory(2)
    repo = Path(__file__).resolve().parents[2]
    unit = (repo / "deploy" / "systemd" / "meshrouter.service").read_text()
    keys = dict(
        ln.split("=", 1) for ln in unit.splitlines() if "=" in ln and not ln.startswith("#")
    )
    mesh = shutil.which("mesh")
    assert mesh is not None, "the package is not installed (pip install -e .)"
    conf = lab.tmp / "meshrouter.toml"
    example = (repo / "deploy" / "systemd" / "meshrouter.toml").read_text()
    conf.write_text(
        example.replace("/etc/meshrouter/password", str(lab.password_file))
        + f'dns-upstream = "{NO_UPSTREAM}"\ndocker-plugin = ""\n'
    )

    def run(command: str, i: int) -> subprocess.CompletedProcess[str]:
        argv = command.replace("/usr/local/bin/mesh", mesh).split()
        argv = [str(conf) if a == "/etc/meshrouter/meshrouter.toml" else a for a in argv]
        env = dict(os.environ, MESH_STATE_DIR=str(lab.state_dir(i)), MESH_NO_DOCKER="1")
        return subprocess.run(
            ["ip", "netns", "exec", lab.host(i), *argv],
            env=env, cwd="/", capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    first = run(keys["ExecStart"], 1)
    assert first.returncode == 0, first.stderr
    again = run(keys["ExecStart"], 1)  # a second start at boot, or by hand
    assert again.returncode == 0, again.stderr
    assert "already running with these options" in again.stdout
    pid_file = Path(keys["PIDFile"].replace("/var/lib/meshrouter", str(lab.state_dir(1))))
    assert int(pid_file.read_text()) == lab.router_pid(1)
    # The second host's config names the first as its peer.
    conf.write_text(conf.read_text().replace("peers = []", f'peers = ["{lab.addr(1)}"]'))
    assert run(keys["ExecStart"], 2).returncode == 0
    lab.wait_for("connected", lambda: established(lab, 1) and established(lab, 2))
    stop = run(keys["ExecStop"], 1)
    assert stop.returncode == 0
    assert "router stopped" in stop.stdout
    assert run(keys["ExecStop"], 1).returncode == 0  # stopped already: still a success
