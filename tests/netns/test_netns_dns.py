"""The mesh's DNS with real resolvers in containers on three hosts: glibc
(getent), dig, Python's getaddrinfo; a fake upstream inside the lab."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from meshrouter.testing.netlab import Lab, star, status

pytestmark = pytest.mark.netns

LabFactory = Callable[..., Lab]
DNS = "169.254.53.53"


def dig(lab: Lab, ns: str, *args: str) -> list[str]:
    out = lab.in_ns(ns, "dig", "+short", "+time=2", "+tries=1", *args, check=False).stdout
    return [ln for ln in out.splitlines() if ln and not ln.startswith(";")]


def rcode(lab: Lab, ns: str, *args: str) -> str:
    out = lab.in_ns(ns, "dig", "+time=3", "+tries=1", *args, check=False).stdout
    for line in out.splitlines():
        if "status:" in line:
            return line.split("status:")[1].split(",")[0].strip()
    return "no answer"


def getent(lab: Lab, ns: str, name: str) -> list[str]:
    out = lab.in_ns(ns, "getent", "hosts", name, check=False).stdout
    return sorted(ln.split()[0] for ln in out.splitlines())


def getaddrinfo(lab: Lab, ns: str, name: str) -> list[str]:
    code = (
        "import socket, sys\n"
        "try:\n"
        "    r = socket.getaddrinfo(sys.argv[1], 80, socket.AF_INET, socket.SOCK_STREAM)\n"
        "except socket.gaierror:\n"
        "    r = []\n"
        "print(' '.join(sorted({a[4][0] for a in r})))\n"
    )
    return lab.in_ns(ns, sys.executable, "-c", code, name).stdout.split()


def test_a_name_resolves_on_every_host_and_goes_with_detach(lab_factory: LabFactory) -> None:
    lab = lab_factory(3)
    star(lab, 3)
    web = lab.container("web")
    c2, c3 = lab.container("c2"), lab.container("c3")
    addr = lab.mesh(1, "attach", web).stdout.strip().split("/")[0]
    lab.mesh(2, "attach", c2)
    lab.mesh(3, "attach", c3)
    name = f"{web}.mesh.local"
    lab.wait_for("name on h2", lambda: getent(lab, c2, name) == [addr], timeout=5)
    lab.wait_for("name on h3", lambda: dig(lab, c3, name) == [addr], timeout=5)
    assert getaddrinfo(lab, c2, web) == [addr]  # the short name, through the search list
    # PTR, and answers for what has no records.
    assert dig(lab, c3, "-x", addr) == [f"{name}."]
    assert rcode(lab, c3, "nobody.mesh.local") == "NXDOMAIN"
    assert rcode(lab, c3, "AAAA", name) == "NOERROR"
    assert dig(lab, c3, "AAAA", name) == []
    # Each host answered its own containers.
    assert status(lab, 3)["dns"]["counters"]["queries"] > 0
    lab.mesh(1, "detach", web)
    lab.wait_for("name gone on h2", lambda: getent(lab, c2, name) == [], timeout=5)
    lab.wait_for("name gone on h3", lambda: rcode(lab, c3, name) == "NXDOMAIN", timeout=5)
    assert not os.path.exists(f"/etc/netns/{web}/resolv.conf")


def test_three_containers_of_one_name_come_back_as_three_in_varying_order(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(3)
    star(lab, 3)
    addrs = set()
    for i in (1, 2, 3):
        c = lab.container(f"w{i}")
        addrs.add(lab.mesh(i, "attach", "--hostname", "web", c).stdout.strip().split("/")[0])
    client = lab.container("cl")
    lab.mesh(2, "attach", "--without-dns", client)
    assert "cl" not in lab.mesh(2, "status", "dns").stdout
    lab.wait_for("three addresses", lambda: set(dig(lab, client, "web.mesh.local")) == addrs, 5)
    orders = {tuple(dig(lab, client, "web.mesh.local")) for _ in range(12)}
    assert len(orders) > 1  # shuffled
    assert lab.mesh(3, "dns-lookup", "web").stdout.split() == sorted(
        addrs, key=lambda a: tuple(int(x) for x in a.split("."))
    )


UPSTREAM = """
import socket, sys
import dns.message, dns.rrset
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 5353)); print("ready", flush=True)
while True:
    data, addr = s.recvfrom(4096)
    q = dns.message.from_wire(data)
    r = dns.message.make_response(q)
    name = q.question[0].name
    if name.to_text() == "outside.example.":
        r.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.7"))
    s.sendto(r.to_wire(), addr)
"""


def test_other_names_go_upstream_and_servfail_when_it_is_silent(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    upstream = subprocess.Popen(
        ["ip", "netns", "exec", lab.host(1), sys.executable, "-c", UPSTREAM, lab.addr(1)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert upstream.stdout is not None
        assert upstream.stdout.readline().strip() == "ready"
        lab.launch(1)
        lab.launch(2, lab.addr(1), extra=("--dns-upstream", f"{lab.addr(1)}:5353"))
        c = lab.container("c")
        lab.mesh(2, "attach", "net:10.32.0.0/12", c)
        assert dig(lab, c, "outside.example") == ["192.0.2.7"]
        assert rcode(lab, c, "other.example") == "NOERROR"  # the upstream's word, passed on
        assert rcode(lab, c, "+tcp", "outside.example") == "NOERROR"
    finally:
        upstream.kill()
        upstream.communicate()
    assert rcode(lab, c, "outside.example") == "SERVFAIL"
    counters = status(lab, 2)["dns"]["counters"]
    assert counters["upstream_answers"] >= 2
    assert counters["upstream_failures"] >= 1


GARBAGE = """
import os, random, socket, sys
random.seed(7)
for _ in range(300):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(os.urandom(random.randint(0, 600)), (sys.argv[1], 53)); s.close()
for _ in range(20):
    t = socket.create_connection((sys.argv[1], 53), timeout=5)
    t.sendall(os.urandom(random.randint(1, 300))); t.close()
print("sent")
"""


def test_random_bytes_at_the_dns_port_change_nothing(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    lab.launch(1)
    lab.launch(2, lab.addr(1))
    web, c = lab.container("web"), lab.container("c")
    addr = lab.mesh(1, "attach", web).stdout.strip().split("/")[0]
    lab.mesh(1, "attach", c)
    assert lab.in_ns(c, sys.executable, "-c", GARBAGE, DNS).stdout.strip() == "sent"
    assert dig(lab, c, f"{web}.mesh.local") == [addr]
    st = status(lab, 1)
    assert st["dns"]["counters"]["dropped"] >= 250  # a few random datagrams parse as queries
    assert "router exited" not in lab.mesh(1, "status").stdout


def test_names_survive_a_router_restart_and_a_removed_container_loses_its_name(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(2)
    lab.launch(1)
    lab.launch(2, lab.addr(1))
    web, gone, c = lab.container("web"), lab.container("gone"), lab.container("c")
    addr = lab.mesh(1, "attach", web).stdout.strip().split("/")[0]
    lab.mesh(1, "attach", gone)
    lab.mesh(2, "attach", c)
    lab.wait_for("name on h2", lambda: dig(lab, c, f"{web}.mesh.local") == [addr], timeout=5)
    lab.mesh(1, "stop")
    lab.launch(1)
    assert lab.mesh(1, "dns-lookup", web).stdout.split() == [addr]
    lab.wait_for("name on h2 again", lambda: dig(lab, c, f"{web}.mesh.local") == [addr], 10)
    # Removed without detach: IPAM reclaims the address, DNS drops the name.
    subprocess.run(["ip", "netns", "del", gone], check=True)
    lab.wait_for(
        "removed container's name gone",
        lambda: rcode(lab, c, f"{gone}.mesh.local") == "NXDOMAIN",
        timeout=15,
    )


def test_dns_add_and_remove_for_names_outside_the_mesh(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    lab.launch(1)
    lab.launch(2, lab.addr(1))
    c = lab.container("c")
    lab.mesh(2, "attach", c)
    lab.mesh(1, "dns-add", "192.0.2.10", "192.0.2.11", "-h", "db.example.com")
    lab.wait_for(
        "extra name on h2",
        lambda: sorted(dig(lab, c, "db.example.com")) == ["192.0.2.10", "192.0.2.11"],
        timeout=5,
    )
    lab.mesh(1, "dns-remove", "192.0.2.10", "-h", "db.example.com")
    lab.wait_for("one left", lambda: dig(lab, c, "db.example.com") == ["192.0.2.11"], 5)
    bad = lab.mesh(1, "dns-add", "192.0.2.1", "-h", "bad name!", check=False)
    assert bad.returncode == 1
    assert "invalid DNS name" in bad.stderr
    assert lab.mesh(1, "dns-args").stdout.strip() == f"--dns={DNS} --dns-search=mesh.local"
    off = lab.container("off")  # a router without DNS: no route to it, no name
    lab.mesh(2, "stop")
    lab.launch(2, lab.addr(1), extra=("--no-dns",))
    lab.mesh(2, "attach", off)
    routes = lab.in_ns(off, "ip", "route").stdout
    assert DNS not in routes
    assert "DNS: off" in lab.mesh(2, "status").stdout


def test_a_burst_of_queries_is_answered_without_loss(lab_factory: LabFactory) -> None:
    """Behaviour only (every query answered); the rate is measured by bench/dns.py."""
    lab = lab_factory(1)
    lab.launch(1)
    web, c = lab.container("web"), lab.container("c")
    lab.mesh(1, "attach", web)
    lab.mesh(1, "attach", c)
    out = lab.in_ns(
        c,
        sys.executable,
        "-m",
        "bench.dns",
        "--count",
        "2000",
        "--name",
        f"{web}.mesh.local",
        timeout=120,
    ).stdout
    assert "lost 0" in out, out
