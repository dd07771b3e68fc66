"""End-to-end: real router processes in namespaces, real traffic across the encrypted mesh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from meshrouter import __version__
from meshrouter.testing.netlab import Lab, established, sh, star, status, tcp_transfer

pytestmark = pytest.mark.netns

LabFactory = Callable[..., Lab]


def two_host_mesh(
    lab: Lab, extra: tuple[str, ...] = (), extra2: tuple[str, ...] | None = None
) -> tuple[str, str]:
    lab.launch(1, extra=extra)
    lab.launch(2, lab.addr(1), extra=extra if extra2 is None else extra2)
    c1, c2 = lab.container("c1"), lab.container("c2")
    assert lab.mesh(1, "attach", "10.32.0.1/12", c1).stdout.strip() == "10.32.0.1/12"
    assert lab.mesh(2, "attach", "10.32.0.2/12", c2).stdout.strip() == "10.32.0.2/12"
    lab.wait_for("UDP both ways", lambda: established(lab, 1) and established(lab, 2))
    return c1, c2


def log_of(lab: Lab, i: int) -> str:
    return (lab.state_dir(i) / "router.log").read_text()


@pytest.mark.parametrize("planes", [("c", "c"), ("python", "python"), ("c", "python")])
def test_two_hosts_ping_and_tcp_transfer_intact(
    lab_factory: LabFactory, planes: tuple[str, str]
) -> None:
    """Each data plane, and a mesh of both (a host without a C compiler)."""
    lab = lab_factory(2)
    c1, c2 = two_host_mesh(lab, ("--dataplane", planes[0]), ("--dataplane", planes[1]))
    ping = lab.in_ns(c1, "ping", "-c", "5", "-i", "0.2", "-W", "2", "10.32.0.2", check=False)
    assert " 0% packet loss" in ping.stdout, ping.stdout
    sent, got = tcp_transfer(lab, c1, c2, "10.32.0.2", 8 << 20)
    assert sent == got
    assert sent.startswith(str(8 << 20))
    # The other way round too.
    sent, got = tcp_transfer(lab, c2, c1, "10.32.0.1", 1 << 20)
    assert sent == got
    st = status(lab, 1)
    (conn,) = st["connections"]
    assert conn["encrypted"]
    assert conn["cipher"] == "aegis128l"
    # 8 MiB came in (c2 -> c1 was 1 MiB, plus the first transfer's ACKs went out).
    assert conn["rx_bytes"] > 1 << 20
    assert conn["tx_bytes"] > 8 << 20
    assert conn["datagram_size"] == 1472  # path MTU probed on a 1500-byte underlay
    st2 = status(lab, 2)
    for side, plane in zip((st, st2), planes, strict=True):
        assert side["dataplane"] == plane
        if plane == "c":
            assert side["counters"]["frames_sent"] > 0
        else:
            assert "frames_sent" not in side["counters"]
        assert side["offload"]["tap"]
        assert side["offload"]["udp_gso"]
        assert side["offload"]["udp_gro"]
        assert side["offload"]["gso_sends"] > 0
    if planes == ("c", "c"):
        # Taught once, the C loop carries another 8 MiB: Python sees a handful
        # of frames (lanes and seen MACs are refreshed each second, heartbeats).
        before = status(lab, 1)["counters"], status(lab, 2)["counters"]
        sent, got = tcp_transfer(lab, c1, c2, "10.32.0.2", 8 << 20)
        assert sent == got
        after = status(lab, 1)["counters"], status(lab, 2)["counters"]

        def grew(side: int, key: str) -> int:
            return int(after[side].get(key, 0)) - int(before[side].get(key, 0))

        assert grew(0, "frames_sent") >= 100, after[0]  # 64 KiB superframes
        assert grew(0, "frames_to_python") <= 25, after[0]
        assert grew(1, "messages_delivered") >= 100, after[1]
        assert grew(1, "datagrams_to_python") <= 25, after[1]
    # The container MTU is what the tunnel carries.
    link = lab.in_ns(c1, "ip", "-j", "link", "show", "dev", "ethwe").stdout
    assert json.loads(link)[0]["mtu"] == 1376


def test_payload_never_crosses_underlay_in_clear(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    c1, c2 = two_host_mesh(lab)
    marker = "MESHROUTER-CLEARTEXT-MARKER-7f3a"
    pcap = lab.tmp / "underlay.pcap"
    inner = lab.tmp / "container.pcap"
    dump = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.switch,
            "tcpdump",
            "-i",
            "br0",
            "-U",
            "-s",
            "0",
            "-w",
            str(pcap),
        ],
        stderr=subprocess.DEVNULL,
    )
    dump_c = subprocess.Popen(
        ["ip", "netns", "exec", c2, "tcpdump", "-i", "ethwe", "-U", "-s", "0", "-w", str(inner)],
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # let tcpdump open its sockets
        lab.in_ns(c1, "ping", "-c", "5", "-i", "0.2", "-p", marker.encode()[:16].hex(), "10.32.0.2")
        lab.in_ns(
            c1,
            sys.executable,
            "-c",
            f"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for _ in range(20): s.sendto(b'{marker}', ('10.32.0.2', 9999))",
        )
        time.sleep(1.0)
    finally:
        dump.terminate()
        dump_c.terminate()
        dump.wait(10)
        dump_c.wait(10)
    under = pcap.read_bytes()
    seen_inside = inner.read_bytes()
    # Positive control: the marker is really sent (visible inside the container) ...
    assert marker.encode() in seen_inside
    # ... and never appears on the underlay, where our datagrams do flow.
    assert marker.encode() not in under
    assert marker.encode()[:16] not in under
    from scapy.all import UDP, rdpcap

    ours = [p for p in rdpcap(str(pcap)) if UDP in p and p[UDP].dport == 6783]
    assert len(ours) >= 10  # 5 pings each way, the UDP burst (packed), heartbeats
    assert {bytes(p[UDP].payload)[0] for p in ours} <= {1, 2}  # DATA and HEARTBEAT only


def test_wrong_password_is_refused_and_carries_no_traffic(lab_factory: LabFactory) -> None:
    lab = lab_factory(3)
    lab.launch(1)
    bad = lab.tmp / "bad-password"
    bad.write_text("not-the-mesh-password\n")
    bad.chmod(0o600)
    # h3 will never join, so it cannot reach a quorum for addresses: it is told
    # it starts alone (--ipalloc-init 1) to attach its container anyway.
    lab.mesh(3, "launch", "--password-file", str(bad), "--ipalloc-init", "1", lab.addr(1))
    c1, c3 = lab.container("c1"), lab.container("c3")
    lab.mesh(1, "attach", "10.32.0.1/12", c1)
    lab.mesh(3, "attach", "10.32.0.3/12", c3)
    lab.wait_for(
        "refusal logged on both sides",
        lambda: "wrong password" in log_of(lab, 1) and "wrong password" in log_of(lab, 3),
    )
    # h3 keeps retrying, so a connection may be mid-handshake; none completes.
    assert all(c["state"] == "handshake" for c in status(lab, 1)["connections"])
    assert status(lab, 3)["counters"].get("handshake_failures", 0) >= 1
    targets = status(lab, 3)["targets"]
    assert "wrong password" in (targets[0]["last_error"] or "")
    ping = lab.in_ns(c3, "ping", "-c", "2", "-W", "1", "10.32.0.1", check=False)
    assert ping.returncode != 0
    # A peer with the right password still joins.
    lab.launch(2, lab.addr(1))
    lab.wait_for("good peer established", lambda: established(lab, 1))


def test_udp_blocked_is_reported_not_established(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    lab.run(
        2,
        "nft",
        "add table inet t; add chain inet t in { type filter hook input priority 0; };"
        " add rule inet t in udp dport 6783 drop",
    )
    lab.launch(1)
    lab.launch(2, lab.addr(1))
    lab.wait_for("TCP connection", lambda: len(status(lab, 1)["connections"]) == 1)
    time.sleep(2.5)
    for i in (1, 2):
        (conn,) = status(lab, i)["connections"]
        assert conn["state"].startswith("pending"), conn
    lab.run(2, "nft", "delete table inet t")
    lab.wait_for("UDP both ways after unblock", lambda: established(lab, 1) and established(lab, 2))


def test_connect_forget_and_stop(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    lab.launch(1)
    lab.launch(2)
    assert status(lab, 2)["connections"] == []
    out = lab.mesh(2, "connect", lab.addr(1)).stdout
    assert "198.18.0.1:6783" in out
    lab.wait_for("connected", lambda: established(lab, 1) and established(lab, 2))
    text = lab.mesh(2, "status", "targets").stdout
    assert "198.18.0.1:6783" in text
    assert "connected" in text
    lab.mesh(2, "forget", lab.addr(1))
    lab.wait_for("disconnected", lambda: status(lab, 1)["connections"] == [])
    assert "forgotten by operator" in log_of(lab, 1)
    assert status(lab, 2)["targets"] == []
    err = lab.mesh(2, "forget", lab.addr(1), check=False)
    assert err.returncode == 1
    assert "not a connection target" in err.stderr
    # Launching twice is refused; stop removes the bridge and the TAP.
    again = lab.mesh(1, "launch", "--password-file", str(lab.password_file), check=False)
    assert again.returncode == 1
    assert "already running" in again.stderr
    assert "removed" in lab.mesh(1, "stop").stdout
    links = lab.run(1, "ip", "-br", "link").stdout
    assert "mesh" not in links
    assert "meshtap" not in links
    err = lab.mesh(1, "status", check=False)
    assert err.returncode == 1
    assert "no router is running" in err.stderr


def host_links(lab: Lab, i: int) -> set[str]:
    return {
        ln.split()[0].split("@")[0] for ln in lab.run(i, "ip", "-br", "link").stdout.splitlines()
    }


def test_addresses_outside_the_range_as_in_weaves_walk_through(lab_factory: LabFactory) -> None:
    """Weave's 'attach 172.25.11.23/24 weave_test' on one host and
    '172.25.11.112/24 weave_another' on the other: accepted, not allocated,
    reachable; a warning where the host has a route that overlaps."""
    lab = lab_factory(2)
    star(lab, 2)
    c1, c2 = lab.container("wt"), lab.container("wa")
    lab.run(1, "ip", "route", "add", "172.25.0.0/16", "dev", "eth0")
    one = lab.mesh(1, "attach", "172.25.11.23/24", c1)
    assert "outside the mesh range" in one.stderr
    assert "overlaps this host's route '172.25.0.0/16 dev eth0" in one.stderr
    two = lab.mesh(2, "attach", "172.25.11.112/24", c2)
    assert "overlaps" not in two.stderr
    ping = lab.in_ns(c1, "ping", "-c2", "-W2", "172.25.11.112", check=False)
    assert ping.returncode == 0, ping.stdout
    assert all("172.25" not in a["address"] for a in status(lab, 1)["ipam"]["allocations"])
    assert "172.25.11.23/24" in lab.mesh(1, "ps").stdout
    assert lab.mesh(1, "detach", c1).returncode == 0


def test_attach_detach_and_their_errors(lab_factory: LabFactory) -> None:
    lab = lab_factory(1)
    c1, c2 = lab.container("c1"), lab.container("c2")
    err = lab.mesh(1, "attach", "10.32.0.9/12", c1, check=False)
    assert err.returncode == 1
    assert "mesh launch" in err.stderr
    lab.launch(1)
    before = host_links(lab, 1)

    def refused(*args: str) -> str:
        r = lab.mesh(1, "attach", *args, check=False)
        assert r.returncode == 1, r
        assert host_links(lab, 1) == before  # nothing half-made
        assert len(r.stderr.strip().splitlines()) == 1
        return r.stderr

    assert "cannot be a container's address" in refused("fe80::5/64", c1)  # link-local
    assert "invalid address" in refused("10.32.0.300/12", c1)
    assert "invalid address" in refused("banana", c1)
    assert "ip netns add" in refused("10.32.0.5/12", "no-such-container")
    assert "network or broadcast" in refused("10.32.0.0/12", c1)

    assert lab.mesh(1, "attach", "10.32.0.5/12", c1).returncode == 0
    before = host_links(lab, 1)
    assert "already attached to" in refused("10.32.0.5/12", c2)
    # Attaching again adds an address (Weave's attach), once; detach ADDR takes it away.
    both = ["10.32.0.5/12", "10.32.0.6/12"]
    assert lab.mesh(1, "attach", "10.32.0.6/12", c1).stdout.split() == both
    assert lab.mesh(1, "attach", "10.32.0.6/12", c1).stdout.split() == both
    assert "10.32.0.6/12 removed from" in lab.mesh(1, "detach", "10.32.0.6", c1).stdout
    # An ethwe the mesh did not make is left alone.
    lab.in_ns(c2, "ip", "link", "add", "ethwe", "type", "veth", "peer", "name", "ethwe-p")
    assert "did not make" in refused("10.32.0.7/12", c2)
    lab.in_ns(c2, "ip", "link", "del", "ethwe")
    ps = lab.mesh(1, "ps").stdout
    assert c1 in ps
    assert "10.32.0.5/12" in ps
    addr = lab.in_ns(c1, "ip", "-br", "addr", "show", "dev", "ethwe").stdout
    assert "10.32.0.5/12" in addr

    assert "detached" in lab.mesh(1, "detach", c1).stdout
    assert lab.in_ns(c1, "ip", "link", "show", "dev", "ethwe", check=False).returncode != 0
    assert c1 not in lab.mesh(1, "ps").stdout
    err = lab.mesh(1, "detach", c1, check=False)
    assert err.returncode == 1
    assert "not attached" in err.stderr
    # The address is free again.
    assert lab.mesh(1, "attach", "10.32.0.5/12", c2).returncode == 0
    # Without a CIDR, IPAM picks a free address of the range.
    got = lab.mesh(1, "attach", c1).stdout.strip()
    assert got.endswith("/12")
    assert got != "10.32.0.5/12"
    assert got.startswith("10.3") or got.startswith("10.4")


def test_garbage_on_6783_does_not_hurt_established_peers(lab_factory: LabFactory) -> None:
    lab = lab_factory(3)
    c1, _ = two_host_mesh(lab)
    junk = (
        "import socket, os\n"
        "for i in range(200):\n"
        "    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "    u.sendto(os.urandom(i % 90), ('198.18.0.1', 6783))\n"
        "for n in (0, 3, 40, 5000):\n"
        "    t = socket.create_connection(('198.18.0.1', 6783), timeout=5)\n"
        "    t.sendall(os.urandom(n)); t.close()\n"
    )
    lab.run(3, sys.executable, "-c", junk)
    ping = lab.in_ns(c1, "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.32.0.2", check=False)
    assert " 0% packet loss" in ping.stdout
    st = status(lab, 1)
    assert sum(st["drops"].values()) >= 150
    assert established(lab, 1)


def test_lab_leaves_root_namespace_untouched(lab_factory: LabFactory) -> None:
    """The network rule: nothing of ours in the root namespace, before or after."""

    def root() -> tuple[str, str, str]:
        return (
            sh("ip", "route", "show").stdout,
            sh("ip", "-br", "addr").stdout,
            sh("ip", "-br", "link").stdout,
        )

    before = root()
    lab = lab_factory(2)
    two_host_mesh(lab)
    during = root()
    assert during == before
    assert "10.32." not in during[0]
    assert "198.18." not in during[0]
    lab.close()
    assert lab.namespaces() == []
    assert root() == before


def test_replayed_underlay_datagrams_are_dropped_and_counted(lab_factory: LabFactory) -> None:
    lab = lab_factory(3)
    c1, _ = two_host_mesh(lab)
    pcap = lab.tmp / "replay.pcap"
    dump = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.switch,
            "tcpdump",
            "-i",
            "br0",
            "-U",
            "-w",
            str(pcap),
            "udp and dst host 198.18.0.1 and dst port 6783",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        lab.in_ns(c1, "ping", "-c", "5", "-i", "0.2", "10.32.0.2")
        time.sleep(0.5)
    finally:
        dump.terminate()
        dump.wait(10)
    from scapy.all import UDP, rdpcap

    payloads = [bytes(p[UDP].payload) for p in rdpcap(str(pcap)) if UDP in p]
    assert len(payloads) >= 5
    before = status(lab, 1)["drops"].get("replayed", 0)
    replay = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for h in sys.argv[1:]: s.sendto(bytes.fromhex(h), ('198.18.0.1', 6783))\n"
    )
    lab.run(3, sys.executable, "-c", replay, *(p.hex() for p in payloads))
    lab.wait_for(
        "replays counted",
        lambda: status(lab, 1)["drops"].get("replayed", 0) - before >= len(payloads),
    )
    ping = lab.in_ns(c1, "ping", "-c", "2", "-i", "0.2", "-W", "2", "10.32.0.2", check=False)
    assert " 0% packet loss" in ping.stdout


FAKE_DOCKER = """#!/bin/sh
# A stand-in Docker CLI: an engine that knows one running container, "web01".
# Like podman's docker command, it answers 'version' but not 'info --format'.
case "$1" in
  version) echo 4.3.1 ;;
  info) echo "Error: template: info:1:2: executing at <.ServerVersion>" >&2; exit 125 ;;
  inspect)
    for a in "$@"; do last="$a"; done
    if [ "$last" = web01 ] || [ "$last" = 0123abcd ]; then
      echo "$(cat "$FAKE_DOCKER_PID") 0123abcd /web01"
    elif [ "$last" = stopped01 ]; then echo "0 feedbeef /stopped01"
    else echo "Error: No such object: $last" >&2; exit 1; fi ;;
  *) echo "fake docker: $*" >&2; exit 1 ;;
esac
"""


def test_attach_docker_container_by_name_and_id(lab_factory: LabFactory) -> None:
    """With a Docker engine, CONTAINER is a container name or id (engine faked by a script)."""
    lab = lab_factory(1)
    lab.launch(1)
    ns = lab.container("dk")  # the container's network namespace
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "120"])
    try:
        bindir = lab.tmp / "bin"
        bindir.mkdir()
        (bindir / "docker").write_text(FAKE_DOCKER)
        (bindir / "docker").chmod(0o755)
        pidfile = lab.tmp / "docker.pid"
        pidfile.write_text(str(proc.pid))

        env = {"PATH": f"{bindir}:{os.environ['PATH']}", "FAKE_DOCKER_PID": str(pidfile)}

        def mesh(*args: str) -> subprocess.CompletedProcess[str]:
            return lab.mesh(1, *args, check=False, env=env, engines=True)

        ok = mesh("attach", "10.32.0.7/12", "web01")
        assert ok.returncode == 0, ok.stderr
        addr = lab.in_ns(ns, "ip", "-br", "addr", "show", "dev", "ethwe").stdout
        assert "10.32.0.7/12" in addr
        assert "docker" in mesh("ps").stdout
        assert mesh("dns-lookup", "web01").stdout.split() == ["10.32.0.7"]  # its Docker name
        err = mesh("attach", "10.32.0.8/12", "stopped01")
        assert "is not running" in err.stderr
        err = mesh("attach", "10.32.0.8/12", "nosuch")
        assert "no container or network namespace named 'nosuch'" in err.stderr
        assert mesh("detach", "0123abcd").returncode == 0
        assert lab.in_ns(ns, "ip", "link", "show", "dev", "ethwe", check=False).returncode != 0
    finally:
        proc.kill()
        proc.wait()


def test_stop_keeps_a_bridge_the_operator_made(lab_factory: LabFactory) -> None:
    """'mesh stop' removes only what 'mesh launch' made: an existing bridge and
    what is on it stay."""
    lab = lab_factory(1)
    lab.run(1, "ip", "link", "add", "name", "br0", "type", "bridge")
    lab.run(1, "ip", "link", "add", "name", "opveth0", "type", "veth", "peer", "name", "opveth1")
    lab.run(1, "ip", "link", "set", "dev", "opveth0", "master", "br0")
    lab.launch(1, extra=("--bridge", "br0"))
    assert "meshtap" in lab.run(1, "ip", "-br", "link", "show", "master", "br0").stdout
    out = lab.mesh(1, "stop").stdout
    assert "bridge br0 kept" in out
    on_bridge = lab.run(1, "ip", "-br", "link", "show", "master", "br0").stdout
    assert "opveth0" in on_bridge
    assert "meshtap" not in on_bridge
    # A bridge the router made is still removed by stop.
    lab.launch(1, extra=("--bridge", "mine0"))
    assert "bridge mine0 removed" in lab.mesh(1, "stop").stdout
    assert "mine0" not in lab.run(1, "ip", "-br", "link").stdout


# A stand-in engine for 'mesh launch --engine docker': 'run' starts the
# router as a local process (the image's entrypoint is 'mesh') and
# records it; 'inspect', 'logs' and 'rm -f' act on that process.  With
# FAKE_DOCKER_FAIL set, 'run' fails the way a missing image does.
ENGINE = """#!/bin/sh
dir="$FAKE_DOCKER_DIR"; echo "$*" >> "$dir/calls"
case "$1" in
  version) echo 20.10.24 ;;
  run)
    if [ -n "$FAKE_DOCKER_FAIL" ]; then
      echo "Unable to find image 'IMAGE' locally" >&2
      echo created > "$dir/left"; exit 125
    fi
    while [ "$1" != "IMAGE" ]; do shift; done; shift
    python3 -m launcher "$@" > "$dir/log" 2>&1 &
    echo $! > "$dir/pid"; echo 0123abcd ;;
  inspect)
    [ -f "$dir/pid" ] || [ -f "$dir/left" ] || exit 1
    if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null
    then echo true; else echo false; fi ;;
  logs) tail -n 5 "$dir/log" ;;
  rm) rm -f "$dir/left"
    [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null; rm -f "$dir/pid" ;;
  *) exit 1 ;;
esac
""".replace("IMAGE", f"meshrouter:{__version__}")


def test_launch_with_the_docker_engine_is_explicit_reported_and_cleans_up(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(1)
    fake = lab.tmp / "engine"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "docker").write_text(ENGINE)
    (fake / "bin" / "docker").chmod(0o755)
    env = {"PATH": f"{fake / 'bin'}:{os.environ['PATH']}", "FAKE_DOCKER_DIR": str(fake)}

    def mesh(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return lab.mesh(1, *args, check=False, env=dict(env, **extra), engines=True)

    pw = ("--password-file", str(lab.password_file))
    # The engine answers, but launch runs a local process unless told otherwise.
    local = mesh("launch", *pw)
    assert local.returncode == 0, local.stderr
    assert "as a local process" in local.stdout
    assert mesh("stop").returncode == 0
    assert not (fake / "calls").exists() or "run" not in (fake / "calls").read_text()
    # A failing 'docker run' is reported at once and leaves no container.
    t0 = time.monotonic()
    bad = mesh("launch", "--engine", "docker", *pw, FAKE_DOCKER_FAIL="1")
    assert bad.returncode == 1
    assert f"docker run meshrouter:{__version__} failed: Unable to find image" in bad.stderr
    assert time.monotonic() - t0 < 10
    assert not (fake / "left").exists()
    # A working one says where the router runs and where its log is.
    ok = mesh("launch", "--engine", "docker", *pw)
    assert ok.returncode == 0, ok.stderr
    assert "as container meshrouter (docker); logs: docker logs meshrouter" in ok.stdout
    assert mesh("stop").returncode == 0
    assert (fake / "calls").read_text().splitlines()[-1] == "rm -f meshrouter"
    assert not (fake / "pid").exists()
    # A container left by an earlier launch is removed by stop, not ignored.
    (fake / "left").write_text("created")
    assert mesh("stop").returncode == 0
    assert not (fake / "left").exists()
