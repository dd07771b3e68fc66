"""The router as a Docker container, and Docker's own networks on the mesh.

Each lab host runs a dockerd of the test's whose "host network" is that
host's namespace (``meshrouter.testing.engines``).  The router image is
built as users build it (``scripts/image.sh``, no network during the build)
once per session and loaded into them.  On each host: ``mesh launch
--engine docker`` runs the image; ``docker network create -d mesh
--ipam-driver mesh`` and ``docker run --network mesh`` put containers on the
mesh with addresses from its IPAM.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshrouter.testing.engines import Dockerd
from meshrouter.testing.netlab import NO_UPSTREAM, Lab, status
from tests.conftest import ROUTER_IMAGE, TEST_IMAGE

pytestmark = [pytest.mark.netns, pytest.mark.slow]

LabFactory = Callable[..., Lab]
Engines = Callable[[Lab, int], Dockerd]
PLUGIN = "/run/docker/plugins/mesh.sock"

SERVER = """
import hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5001)); s.listen(1); c, _ = s.accept(); h = hashlib.sha256()
while data := c.recv(65536): h.update(data)
print(h.hexdigest())
"""
CLIENT = """
import hashlib, os, socket, sys
data = os.urandom(8 << 20); c = socket.create_connection((sys.argv[1], 5001), timeout=20)
c.sendall(data); c.close(); print(hashlib.sha256(data).hexdigest())
"""


@pytest.fixture
def engines(router_images: Path) -> Iterator[Engines]:
    """A dockerd per lab host, with the router and test images loaded; all
    stopped (their containers removed) before the lab goes."""
    made: list[Dockerd] = []

    def make(lab: Lab, i: int) -> Dockerd:
        engine = Dockerd(lab.tmp / f"dockerd-h{i}", netns=lab.host(i))
        made.append(engine)
        engine.start()
        engine.docker("load", "-q", "-i", str(router_images), timeout=300)
        return engine

    try:
        yield make
    finally:
        for engine in made:
            engine.stop()


def launch(lab: Lab, i: int, engine: Dockerd, *peers: str) -> str:
    out = lab.mesh(
        i,
        "launch",
        "--engine",
        "docker",
        "--password-file",
        str(lab.password_file),
        "--docker-plugin",
        PLUGIN,
        "--dns-upstream",
        NO_UPSTREAM,
        *peers,
        env={"DOCKER_HOST": engine.host, "MESH_IMAGE": ROUTER_IMAGE},
        engines=True,
        timeout=90,
    )
    return out.stdout


def transfer(src: tuple[Dockerd, str], dst: tuple[Dockerd, str], addr: str) -> None:
    """8 MiB over TCP from container src to container dst at addr; same SHA-256."""
    server = subprocess.Popen(
        ["docker", "exec", dst[1], "python3", "-c", SERVER],
        env=dst[0].env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            sent = src[0].docker("exec", src[1], "python3", "-c", CLIENT, addr, check=False)
            if sent.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)  # the server not listening yet
        assert sent.returncode == 0, sent.stderr
        got, _ = server.communicate(timeout=30)
        assert got.strip() == sent.stdout.strip()
    finally:
        server.kill()
        server.wait()


def mesh_ip(engine: Dockerd, name: str) -> str:
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    return engine.docker("inspect", "--format", fmt, name).stdout.strip()


def allocated(lab: Lab, i: int) -> set[str]:
    return {a["address"] for a in status(lab, i)["ipam"]["allocations"]}


def test_router_image_docker_network_and_kill_9(lab_factory: LabFactory, engines: Engines) -> None:
    lab = lab_factory(2)
    d1, d2 = engines(lab, 1), engines(lab, 2)
    assert "as container meshrouter (docker)" in launch(lab, 1, d1)
    launch(lab, 2, d2, lab.addr(1))
    lab.wait_for(
        "connected",
        lambda: any(c["state"] == "established" for c in status(lab, 2)["connections"]),
        timeout=30,
    )
    assert status(lab, 1)["dataplane"] == "c"  # the image's wheel carries the C loop
    # Least privilege: capabilities, not --privileged.
    cfg = d1.docker(
        "inspect", "--format", "{{.HostConfig.Privileged}} {{.HostConfig.CapAdd}}", "meshrouter"
    ).stdout
    assert cfg.startswith("false ")
    for d in (d1, d2):
        d.docker(
            "network",
            "create",
            "-d",
            "mesh",
            "--ipam-driver",
            "mesh",
            "--subnet",
            "10.32.0.0/12",
            "mesh",
        )
        listed = d.docker("network", "ls", "--format", "{{.Name}} {{.Driver}}").stdout
        assert "mesh mesh" in listed.splitlines()
    dns = ("--dns", "169.254.53.53", "--dns-search", "mesh.local")
    d1.docker("run", "-d", "--name", "ca", "--network", "mesh", *dns, TEST_IMAGE, "sleep", "600")
    d2.docker(
        "run",
        "-d",
        "--name",
        "cb",
        "--network",
        "mesh",
        "--ip",
        "10.47.0.9",
        *dns,
        TEST_IMAGE,
        "sleep",
        "600",
    )
    a, b = mesh_ip(d1, "ca"), mesh_ip(d2, "cb")
    assert ipaddress.IPv4Address(a) in ipaddress.IPv4Network("10.32.0.0/12")
    assert b == "10.47.0.9"
    assert a in allocated(lab, 1)
    # The address of b was claimed in the share of whoever owns it: held mesh-wide.
    assert b in allocated(lab, 1) | allocated(lab, 2)
    inside = d1.docker("exec", "ca", "ip", "-br", "addr").stdout
    assert "ethwe0" in inside
    assert a in inside
    transfer((d1, "ca"), (d2, "cb"), b)
    transfer((d2, "cb"), (d1, "ca"), a)
    # Named mesh-wide, listed by 'mesh ps' with their anti-spoofing rules.
    resolve = "import socket, sys; print(socket.gethostbyname(sys.argv[1]))"

    def named(d: Dockerd, c: str, name: str, want: str) -> bool:
        got = d.docker("exec", c, "python3", "-c", resolve, name, check=False)
        return got.stdout.strip() == want

    lab.wait_for("cb resolves on h1", lambda: named(d1, "ca", "cb", b), timeout=10)
    lab.wait_for("ca resolves on h2", lambda: named(d2, "cb", "ca.mesh.local", a), timeout=10)
    env1 = {"DOCKER_HOST": d1.host}
    row = next(ln for ln in lab.mesh(1, "ps", env=env1).stdout.splitlines() if ln.startswith("ca "))
    assert "docker-net" in row
    assert a in row
    assert " up " in row
    assert " off" not in row
    # A second container asking for b's address is refused with the reason.
    clash = d1.docker(
        "run",
        "-d",
        "--name",
        "cc",
        "--network",
        "mesh",
        "--ip",
        b,
        TEST_IMAGE,
        "sleep",
        "600",
        check=False,
    )
    assert clash.returncode != 0
    assert "already in use" in clash.stderr
    d1.docker("rm", "-f", "cc", check=False)

    # kill -9 of the router: the engine starts it again, the mesh recovers,
    # nothing is forgotten.
    before = allocated(lab, 1)
    pid = int(d1.docker("inspect", "--format", "{{.State.Pid}}", "meshrouter").stdout)
    os.kill(pid, signal.SIGKILL)

    def back() -> bool:
        out = d1.docker("inspect", "--format", "{{.State.Pid}}", "meshrouter", check=False)
        if out.returncode or out.stdout.strip() in ("0", str(pid)):
            return False
        try:
            return any(c["state"] == "established" for c in status(lab, 1)["connections"])
        except RuntimeError:  # not answering yet
            return False

    lab.wait_for("router restarted and reconnected", back, timeout=40)
    assert allocated(lab, 1) == before
    transfer((d2, "cb"), (d1, "ca"), a)

    # A container attached by name gets its link back after a restart: the
    # router, with no docker command in its image, follows the engine's socket.
    d1.docker("run", "-d", "--name", "cd", "--network", "none", TEST_IMAGE, "sleep", "600")
    cd = lab.mesh(1, "attach", "cd", env=env1, engines=True).stdout.strip()
    d1.docker("restart", "-t", "0", "cd")
    lab.wait_for(
        "cd attached again",
        lambda: cd in d1.docker("exec", "cd", "ip", "-br", "addr", check=False).stdout,
        timeout=20,
    )
    # The router says so once the attach is whole (its name too): a moment after the address.
    lab.wait_for(
        "the router's word on it",
        lambda: "cd attached again with" in d1.docker("logs", "meshrouter").stderr,
        timeout=10,
    )
    assert lab.mesh(1, "detach", "cd", env=env1, engines=True).returncode == 0

    # Removing a container gives its address back, mesh-wide.
    d1.docker("rm", "-f", "ca")
    lab.wait_for("a's address released", lambda: a not in allocated(lab, 1), timeout=10)
    lab.wait_for(
        "ca forgotten by mesh ps",
        lambda: "ca " not in lab.mesh(1, "ps", env=env1).stdout,
        timeout=10,
    )
    lab.wait_for("ca's name withdrawn", lambda: not named(d2, "cb", "ca", a), timeout=10)
    d2.docker("rm", "-f", "cb")
    lab.wait_for(
        "b's address released",
        lambda: b not in allocated(lab, 1) | allocated(lab, 2),
        timeout=10,
    )
    for i, d in ((1, d1), (2, d2)):
        assert "vethwd" not in lab.run(i, "ip", "-br", "link").stdout
        d.docker("network", "rm", "mesh")
        stop = lab.mesh(i, "stop", env={"DOCKER_HOST": d.host}, engines=True)
        assert "router stopped" in stop.stdout
        assert "meshrouter" not in d.docker("ps", "-a").stdout
