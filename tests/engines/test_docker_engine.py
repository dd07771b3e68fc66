"""A real Docker engine (Debian's docker.io): containers attached by name and
by id, reachable across hosts, named in DNS, released when removed.

The test runs its own dockerd (own socket, data and exec roots; no bridge,
no iptables: the root namespace is left as it was) and stops it after.
Containers start with ``--network none``; ``mesh attach`` gives them the mesh.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from meshrouter.testing.engines import Dockerd
from meshrouter.testing.netlab import NO_UPSTREAM, Lab, established, sh, star, status
from tests.conftest import TEST_IMAGE

pytestmark = [pytest.mark.netns, pytest.mark.slow]

LabFactory = Callable[..., Lab]
IMAGE = TEST_IMAGE


def docker(sock: str, *args: str) -> str:
    return sh("docker", *args, env=dict(os.environ, DOCKER_HOST=sock)).stdout.strip()


def mesh(
    lab: Lab, i: int, sock: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``mesh`` on host i with the test's engine in reach."""
    return lab.mesh(i, *args, check=check, env={"DOCKER_HOST": sock}, engines=True)


def pid_of(sock: str, name: str) -> str:
    return docker(sock, "inspect", "--format", "{{.State.Pid}}", name)


def engine_mesh(lab: Lab, sock: str, *extra: str) -> tuple[str, ...]:
    """Host 1's router launched with the test's engine in reach, host 2's
    without, connected; returns the arguments that launch host 1 again."""
    pw = str(lab.password_file)
    launch = ("launch", "--password-file", pw, "--dns-upstream", "198.18.0.254", *extra)
    launched = mesh(lab, 1, sock, *launch)
    assert "as a local process" in launched.stdout
    lab.launch(2, lab.addr(1), extra=extra)
    lab.wait_for(
        "connected",
        lambda: any(c["state"] == "established" for c in status(lab, 2)["connections"]),
        timeout=30,
    )
    return launch


def test_docker_containers_by_name_and_id_across_hosts(
    lab_factory: LabFactory, docker_host: Dockerd
) -> None:
    lab = lab_factory(2)
    star(lab, 2)
    sock = docker_host.host
    web = f"{lab.prefix}-web01"
    cid = docker(sock, "run", "-d", "--name", web, "--network", "none", IMAGE, "sleep", "600")
    other = docker(sock, "run", "-d", "--network", "none", IMAGE, "sleep", "600")
    try:
        a = mesh(lab, 1, sock, "attach", web).stdout.strip().split("/")[0]  # by name
        b = mesh(lab, 2, sock, "attach", other[:12]).stdout.strip().split("/")[0]  # by id
        assert "docker" in mesh(lab, 1, sock, "ps").stdout
        ping = sh("nsenter", "-t", pid_of(sock, other), "-n", "ping", "-c2", "-W2", a, check=False)
        assert ping.returncode == 0, ping.stdout
        # Named by its Docker name (not what was typed), mesh-wide.
        lab.wait_for(
            "web01 in DNS on h2",
            lambda: mesh(lab, 2, sock, "dns-lookup", web, check=False).stdout.split() == [a],
            timeout=5,
        )
        # Removed without detach: its address is released, its name withdrawn.
        docker(sock, "rm", "-f", cid)
        lab.wait_for(
            "address released",
            lambda: a not in {x["address"] for x in status(lab, 1)["ipam"]["allocations"]},
            timeout=15,
        )
        lab.wait_for(
            "name withdrawn",
            lambda: mesh(lab, 2, sock, "dns-lookup", web, check=False).returncode == 1,
            timeout=5,
        )
        assert mesh(lab, 2, sock, "detach", other[:12]).returncode == 0
        assert b not in {x["address"] for x in status(lab, 2)["ipam"]["allocations"]}
        bad = mesh(lab, 1, sock, "attach", "no-such-container", check=False)
        assert bad.returncode == 1
        assert "no container or network namespace named 'no-such-container'" in bad.stderr
    finally:
        subprocess.run(
            ["docker", "rm", "-f", cid, other],
            env=dict(os.environ, DOCKER_HOST=sock),
            capture_output=True,
        )


def test_a_restarted_container_gets_its_link_address_and_name_back(
    lab_factory: LabFactory, docker_host: Dockerd
) -> None:
    lab = lab_factory(2)
    sock = docker_host.host
    engine_mesh(lab, sock)
    web = f"{lab.prefix}-rweb"
    cid = docker(sock, "run", "-d", "--name", web, "--network", "none", IMAGE, "sleep", "600")
    try:
        addr = mesh(lab, 1, sock, "attach", web).stdout.strip()
        peer = lab.container("peer")
        lab.mesh(2, "attach", peer)
        docker(sock, "restart", "-t", "0", web)

        def back() -> bool:
            out = sh("nsenter", "-t", pid_of(sock, web), "-n", "ip", "-br", "addr", check=False)
            return addr in out.stdout

        lab.wait_for("ethwe back with the same address", back, timeout=20)
        ip = addr.split("/")[0]
        assert lab.in_ns(peer, "ping", "-c2", "-W2", ip, check=False).returncode == 0
        row = next(ln for ln in mesh(lab, 1, sock, "ps").stdout.splitlines() if ln.startswith(web))
        assert " up " in f" {row} "
        assert mesh(lab, 2, sock, "dns-lookup", web).stdout.split() == [ip]
        log = (lab.state_dir(1) / "router.log").read_text()
        assert "following Docker events" in log
        assert f"{web} attached again with {addr}" in log
    finally:
        subprocess.run(
            ["docker", "rm", "-f", cid], env=dict(os.environ, DOCKER_HOST=sock), capture_output=True
        )


def test_a_stopped_container_keeps_its_address_name_and_record_until_removed(
    lab_factory: LabFactory, docker_host: Dockerd
) -> None:
    """Issue 23, part 1: ``docker stop`` with a timeout the namespace poll
    sees through (PID 1 ignores SIGTERM, as most do), a while stopped, the
    router relaunched meanwhile, then ``docker start``: the same address
    and name come back, and nobody else got the address in between.  Only
    ``docker rm`` frees them.  Without the engine asked before a release,
    the poll released the address when the namespace went."""
    lab = lab_factory(2)
    sock = docker_host.host
    launch = engine_mesh(lab, sock)
    web = f"{lab.prefix}-sweb"
    cid = docker(sock, "run", "-d", "--name", web, "--network", "none", IMAGE, "sleep", "600")
    try:
        addr = mesh(lab, 1, sock, "attach", web).stdout.strip()
        ip = addr.split("/")[0]

        def held() -> set[str]:
            return {x["address"] for x in status(lab, 1)["ipam"]["allocations"]}

        docker(sock, "stop", "-t", "7", web)  # longer than the namespace poll's 5 s
        time.sleep(7)  # two more polls with the container stopped
        assert ip in held()
        assert mesh(lab, 2, sock, "dns-lookup", web).stdout.split() == [ip]
        assert web in mesh(lab, 1, sock, "ps").stdout
        # The router restarted while the container is stopped: the record stays.
        mesh(lab, 1, sock, "stop")
        mesh(lab, 1, sock, *launch)
        assert web in mesh(lab, 1, sock, "ps").stdout
        # Another container asks for an address: it does not get this one.
        other = docker(sock, "run", "-d", "--network", "none", IMAGE, "sleep", "600")
        try:
            assert mesh(lab, 1, sock, "attach", other[:12]).stdout.strip() != addr
        finally:
            docker(sock, "rm", "-f", other)
        docker(sock, "start", web)

        def back() -> bool:
            out = sh("nsenter", "-t", pid_of(sock, web), "-n", "ip", "-br", "addr", check=False)
            return addr in out.stdout

        lab.wait_for("ethwe back with the same address", back, timeout=20)
        assert mesh(lab, 2, sock, "dns-lookup", web).stdout.split() == [ip]
        log = (lab.state_dir(1) / "router.log").read_text()
        assert "stopped: it keeps its addresses until removed" in log
        docker(sock, "rm", "-f", web)
        lab.wait_for("released once removed", lambda: ip not in held(), timeout=20)
    finally:
        subprocess.run(
            ["docker", "rm", "-f", cid], env=dict(os.environ, DOCKER_HOST=sock), capture_output=True
        )


def test_containers_come_back_on_the_mesh_after_the_engine_restarts(
    lab_factory: LabFactory, docker_host: Dockerd
) -> None:
    """Issue 23, part 2: dockerd stops (its containers with it) and starts
    again; a container with a restart policy comes back with a new
    namespace.  The router's event stream broke meanwhile: when it opens
    again, the router catches up and attaches it again with the same
    address, and nothing was released while the engine was away."""
    lab = lab_factory(2)
    sock = docker_host.host
    pw = str(lab.password_file)
    mesh(lab, 1, sock, "launch", "--password-file", pw, "--dns-upstream", "198.18.0.254")
    web = f"{lab.prefix}-eweb"
    docker(sock, "run", "-d", "--restart", "always", "--name", web, "--network", "none",
           IMAGE, "sleep", "600")  # fmt: skip
    try:
        addr = mesh(lab, 1, sock, "attach", web).stdout.strip()
        docker_host.restart()

        def back() -> bool:
            pid = docker(sock, "inspect", "--format", "{{.State.Pid}}", web)
            if pid in ("", "0"):
                return False
            out = sh("nsenter", "-t", pid, "-n", "ip", "-br", "addr", check=False)
            return addr in out.stdout

        lab.wait_for("attached again after the engine's restart", back, timeout=40)
        held = {x["address"] for x in status(lab, 1)["ipam"]["allocations"]}
        assert addr.split("/")[0] in held
    finally:
        docker(sock, "rm", "-f", web)


def test_a_host_that_reboots_gets_its_containers_back_with_their_addresses(
    lab_factory: LabFactory, docker_host: Dockerd
) -> None:
    """Issue 23, part 3, simulated: on host 1 the router dies hard, its
    bridge goes, the engine stops with its containers and starts again (they
    have a restart policy, so they run again, with no router to see it);
    only the state directory is left.  ``mesh launch`` at boot: the
    containers are attached again with the same addresses and names, and
    the mesh holds each address and name once."""
    lab = lab_factory(2)
    sock = docker_host.host
    launch = engine_mesh(lab, sock)
    web = f"{lab.prefix}-bweb"
    docker(sock, "run", "-d", "--restart", "always", "--name", web, "--network", "none",
           IMAGE, "sleep", "600")  # fmt: skip
    try:
        addr = mesh(lab, 1, sock, "attach", web).stdout.strip()
        ip = addr.split("/")[0]
        lab.wait_for(
            "named on h2",
            lambda: mesh(lab, 2, sock, "dns-lookup", web, check=False).stdout.split() == [ip],
            timeout=10,
        )
        os.kill(lab.router_pid(1), signal.SIGKILL)
        lab.run(1, "ip", "link", "del", "dev", "mesh", check=False)
        docker_host.restart()
        lab.wait_for(
            "the container runs again, off the mesh",
            lambda: docker(sock, "inspect", "--format", "{{.State.Running}}", web) == "true",
            timeout=30,
        )
        mesh(lab, 1, sock, *launch)  # at boot (the systemd unit runs the same)

        def back() -> bool:
            pid = docker(sock, "inspect", "--format", "{{.State.Pid}}", web)
            out = sh("nsenter", "-t", pid, "-n", "ip", "-br", "addr", check=False)
            return addr in out.stdout

        lab.wait_for("attached again with the same address", back, timeout=40)
        mine = [x["address"] for x in status(lab, 1)["ipam"]["allocations"]]
        assert mine == [ip]
        lab.wait_for("connected again", lambda: established(lab, 1), timeout=30)
        lab.wait_for(
            "named once mesh-wide",
            lambda: mesh(lab, 2, sock, "dns-lookup", web, check=False).stdout.split() == [ip],
            timeout=15,
        )
    finally:
        docker(sock, "rm", "-f", web)


def counts(lab: Lab, sock: str) -> dict[str, int]:
    """What attaching leaves on the hosts, counted."""
    out: dict[str, int] = {}
    for i in (1, 2):
        st = status(lab, i)
        links = lab.run(i, "ip", "-br", "link").stdout
        guarded = lab.run(
            i, "nft", "list", "set", "bridge", "meshrouter_guard", "s_guarded", check=False
        )
        records = json.loads(mesh(lab, i, sock, "report").stdout)["attached"]
        out |= {
            f"h{i} veths": links.count("vethwl"),
            f"h{i} records": len(records),
            f"h{i} addresses": len(st["ipam"]["allocations"]),
            f"h{i} names": len(st["dns"]["entries"]),
            f"h{i} guarded ports": guarded.stdout.count('"vethwl'),
        }
    out["containers"] = len(docker(sock, "ps", "-aq").split())
    running = sh("pgrep", "-f", "launcher reattach", check=False).stdout.split()
    out["reattach processes"] = len(running)
    return out


def test_churn_of_create_attach_restart_remove_leaks_nothing(
    lab_factory: LabFactory, docker_host: Dockerd
) -> None:
    """Rounds of containers created, attached (one address, or two in two
    subnets), restarted (the router attaches them again) and removed without
    detach: every count is back where it started."""
    lab = lab_factory(2)
    sock = docker_host.host
    pw = str(lab.password_file)
    mesh(lab, 1, sock, "launch", "--password-file", pw, "--dns-upstream", NO_UPSTREAM)
    lab.launch(2, lab.addr(1))
    lab.wait_for("connected", lambda: established(lab, 2), timeout=30)
    peer = lab.container("peer")
    lab.mesh(2, "attach", peer)
    before = counts(lab, sock)
    rounds, per_round = 3, 4
    for r in range(rounds):
        names = [f"{lab.prefix}-churn{r}x{k}" for k in range(per_round)]
        addrs: dict[str, list[str]] = {}
        for k, name in enumerate(names):
            docker(sock, "run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "600")
            extra = ["net:10.40.0.0/16"] if k % 2 else []
            addrs[name] = mesh(lab, 1, sock, "attach", *extra, "net:default", name).stdout.split()
        for name in names[:2]:
            docker(sock, "restart", "-t", "0", name)
        for name in names[:2]:

            def back(name: str = name, want: list[str] = addrs[name]) -> bool:
                pid = pid_of(sock, name)
                have = sh("nsenter", "-t", pid, "-n", "ip", "-br", "addr", check=False).stdout
                return all(a in have for a in want)

            lab.wait_for(f"{name} back", back, timeout=20)
        first = addrs[names[0]][0].split("/")[0]
        assert lab.in_ns(peer, "ping", "-c1", "-W2", first, check=False).returncode == 0
        docker(sock, "rm", "-f", *names)
        with contextlib.suppress(TimeoutError):  # the assert below says what is left
            lab.wait_for("all released", lambda: counts(lab, sock) == before, timeout=20)
        assert counts(lab, sock) == before, f"round {r}"
    after = counts(lab, sock)
    print("before", before, "after", after)
    assert after == before


def test_with_live_restore_an_engine_restart_leaves_containers_on_the_mesh(
    lab_factory: LabFactory, docker_host: Dockerd
) -> None:
    """Issue 23, part 2, with ``--live-restore``: dockerd goes and comes back
    while its containers run on in their namespaces.  The container stays on
    the mesh throughout (pings answered, its address never released), and
    the router follows the new engine's events: a ``docker restart`` after
    it is attached again, a ``docker rm`` releases its address."""
    lab = lab_factory(2)
    engine = docker_host
    engine.restart(live_restore=True)  # the session's engine, its images kept
    try:
        sock = engine.host
        engine_mesh(lab, sock)
        web = f"{lab.prefix}-lweb"
        docker(sock, "run", "-d", "--name", web, "--network", "none", IMAGE, "sleep", "600")
        addr = mesh(lab, 1, sock, "attach", web).stdout.strip()
        ip = addr.split("/")[0]
        peer = lab.container("peer")
        lab.mesh(2, "attach", peer)
        pid = pid_of(sock, web)
        pinger = subprocess.Popen(
            ["ip", "netns", "exec", peer, "ping", "-i", "0.2", "-W", "1", ip],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            engine.restart()
            assert pid_of(sock, web) == pid  # the same run of it: live-restore held
            for _ in range(10):  # while the new engine settles, the address stays
                assert ip in {x["address"] for x in status(lab, 1)["ipam"]["allocations"]}
                time.sleep(0.5)
        finally:
            pinger.send_signal(signal.SIGINT)
            out, _ = pinger.communicate(timeout=10)
        counts = re.findall(r"(\d+) packets transmitted, (\d+) received", out)[0]
        sent, got = (int(w) for w in counts)
        assert sent >= 20, out[-300:]
        assert got >= sent - 2, out[-300:]  # at most a reply or two in flight
        # The router follows the new engine's events (nothing else re-attaches
        # a restarted Docker container: the catch-up runs when a stream opens).
        docker(sock, "restart", "-t", "0", web)

        def back() -> bool:
            out = sh("nsenter", "-t", pid_of(sock, web), "-n", "ip", "-br", "addr", check=False)
            return addr in out.stdout

        lab.wait_for("attached again after a restart under the new engine", back, timeout=20)
        docker(sock, "rm", "-f", web)
        lab.wait_for(
            "released once removed",
            lambda: ip not in {x["address"] for x in status(lab, 1)["ipam"]["allocations"]},
            timeout=15,
        )
    finally:
        engine.docker("rm", "-f", f"{lab.prefix}-lweb", check=False)
        engine.restart(live_restore=False)


def test_docker_containers_get_ipv6_addresses_with_attach(
    lab_factory: LabFactory, docker_host: Dockerd
) -> None:
    lab = lab_factory(2)
    sock = docker_host.host
    engine_mesh(lab, sock, "--ipalloc-range6", "fd32::/64")
    web = f"{lab.prefix}-web6"
    cid = docker(sock, "run", "-d", "--name", web, "--network", "none", IMAGE, "sleep", "600")
    try:
        v4, v6 = mesh(lab, 1, sock, "attach", web).stdout.split()
        peer = lab.container("peer")
        lab.mesh(2, "attach", peer)
        ip6 = v6.split("/")[0]
        # Docker turned IPv6 off in a container without an IPv6 network; attach turns it on.
        assert lab.in_ns(peer, "ping", "-6", "-c2", "-W2", ip6, check=False).returncode == 0
        shown = sh("nsenter", "-t", pid_of(sock, web), "-n", "ip", "-6", "addr").stdout
        assert ip6 in shown
        lab.wait_for(
            "AAAA on h2",
            lambda: (
                ip6
                in lab.in_ns(peer, "dig", "+short", "AAAA", f"{web}.mesh.local", check=False).stdout
            ),
            timeout=10,
        )
        # Restarted: both families come back.
        docker(sock, "restart", "-t", "0", web)
        lab.wait_for(
            "attached again",
            lambda: ip6 in sh("nsenter", "-t", pid_of(sock, web), "-n", "ip", "-6", "addr").stdout,
            timeout=20,
        )
        assert v4.split("/")[0] in mesh(lab, 1, sock, "ps").stdout
    finally:
        subprocess.run(
            ["docker", "rm", "-f", cid], env=dict(os.environ, DOCKER_HOST=sock), capture_output=True
        )
