"""Hosts on certificates with real routers: a mesh joins by the CA, refuses
another CA's, an expired and a stolen certificate with their reasons,
evicts a revoked host within seconds (also after restarts), renews a
certificate under a running stream, and moves from the password host by
host."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meshrouter.proto import cert as mc
from meshrouter.testing.netlab import NO_UPSTREAM, Lab, full_mesh, status, tcp_transfer

pytestmark = [pytest.mark.netns, pytest.mark.slow]

LabFactory = Callable[..., Lab]


def make_ca(lab: Lab, *hosts: str) -> Path:
    ca = lab.tmp / "ca"
    lab.mesh(1, "ca", "init", str(ca))
    for h in hosts:
        lab.mesh(1, "ca", "sign", str(ca), h)
    return ca


def launch_cert(lab: Lab, i: int, ca: Path, name: str, *peers: str, password: bool = False) -> None:
    pw = ("--password-file", str(lab.password_file)) if password else ()
    lab.mesh(
        i,
        "launch",
        "--cert",
        str(ca / f"{name}.crt"),
        "--key",
        str(ca / f"{name}.key"),
        "--ca",
        str(ca / "ca.crt"),
        *pw,
        "--dns-upstream",
        NO_UPSTREAM,
        *peers,
    )


def cert_mesh(lab: Lab, n: int) -> Path:
    ca = make_ca(lab, *(f"h{i}" for i in range(1, n + 1)))
    launch_cert(lab, 1, ca, "h1")
    for i in range(2, n + 1):
        launch_cert(lab, i, ca, f"h{i}", lab.addr(1))
    lab.wait_for("full mesh", lambda: full_mesh(lab, n), timeout=30)
    return ca


def probe(lab: Lab, i: int, target: int, crt: Path, key: Path, ca: Path, cert_of: str) -> str:
    """A handshake from host i to host ``target`` with these files."""
    name = mc.peer_name_for(cert_of).hex()
    out = lab.run(
        i,
        sys.executable,
        "-m",
        "meshrouter.testing.certclient",
        lab.addr(target),
        "6783",
        str(crt),
        str(key),
        str(ca),
        name,
        cert_of,
        check=False,
    )
    return out.stdout.strip()


def connected_to(lab: Lab, i: int, nickname: str) -> bool:
    return any(c.get("nickname") == nickname for c in status(lab, i)["connections"])


def test_a_certificate_mesh_admits_its_hosts_and_refuses_the_others_with_reasons(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(5)
    ca = cert_mesh(lab, 3)
    st = status(lab, 2)
    assert st["nickname"] == "h2"
    assert st["name"] == ":".join(f"{b:02x}" for b in mc.peer_name_for("h2"))
    conns = [c for c in st["connections"] if c.get("peer")]
    assert {c["auth"] for c in conns} == {"certificate"}
    assert {c["cert"]["name"] for c in conns if c["cert"]} == {"h1", "h3"}
    assert "Identity: certificate h2" in lab.mesh(2, "status").stdout
    c1, c3 = lab.container("c1"), lab.container("c3")
    lab.mesh(1, "attach", "10.32.0.1/12", c1)
    lab.mesh(3, "attach", "10.32.0.3/12", c3)
    lab.wait_for(
        "c1 reaches c3",
        lambda: lab.in_ns(c1, "ping", "-c1", "-W1", "10.32.0.3", check=False).returncode == 0,
        timeout=15,
    )
    sent, got = tcp_transfer(lab, c1, c3, "10.32.0.3", 4 << 20)
    assert sent == got

    # A fourth host with a certificate of the same CA joins.
    lab.mesh(1, "ca", "sign", str(ca), "h4")
    launch_cert(lab, 4, ca, "h4", lab.addr(2))
    lab.wait_for("h4 in the full mesh", lambda: full_mesh(lab, 4), timeout=30)

    # Another CA's host: refused, with the reason on both sides.
    rogue = lab.tmp / "rogue"
    lab.mesh(1, "ca", "init", str(rogue))
    lab.mesh(1, "ca", "sign", str(rogue), "h5")
    out = probe(lab, 5, 1, rogue / "h5.crt", rogue / "h5.key", rogue / "ca.crt", "h5")
    assert out.startswith("CLOSED"), out
    assert "signed by another CA" in out, out
    # The launch itself refuses it against this mesh's CA, in one line.
    bad = lab.mesh(
        5,
        "launch",
        "--cert",
        str(rogue / "h5.crt"),
        "--key",
        str(rogue / "h5.key"),
        "--ca",
        str(ca / "ca.crt"),
        check=False,
    )
    assert bad.returncode == 1
    assert "signed by another CA" in bad.stderr, bad.stderr

    # An expired certificate (an hour ago: beyond the clock-skew allowance).
    seed = mc.dearmor((ca / "ca.key").read_text(), mc.PEM_KEY)[0]
    host_seed = bytes(range(32))
    now = int(time.time())
    old = mc.issue(
        seed,
        name=mc.peer_name_for("h6"),
        nickname="h6",
        public_key=mc.public_key_of(host_seed),
        not_before=now - 86400,
        not_after=now - 3600,
    )
    (lab.tmp / "h6.crt").write_text(mc.armor(mc.PEM_CERT, old.raw))
    (lab.tmp / "h6.key").write_text(mc.armor(mc.PEM_KEY, host_seed))
    (lab.tmp / "h6.key").chmod(0o600)
    out = probe(lab, 5, 1, lab.tmp / "h6.crt", lab.tmp / "h6.key", ca / "ca.crt", "h6")
    assert "expired at" in out, out

    # h2's certificate without h2's key.
    out = probe(lab, 5, 1, ca / "h2.crt", lab.tmp / "h6.key", ca / "ca.crt", "h2")
    assert "without its key" in out, out

    log = (lab.state_dir(1) / "router.log").read_text()
    for reason in ("signed by another CA", "expired at", "without its key"):
        assert reason in log, reason
    assert status(lab, 1)["counters"]["handshake_failures"] >= 3
    assert full_mesh(lab, 4)  # none of it disturbed the mesh


def test_a_revoked_host_is_evicted_within_seconds_and_stays_out_after_restarts(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(3)
    ca = cert_mesh(lab, 3)
    c1, c2, c3 = lab.container("c1"), lab.container("c2"), lab.container("c3")
    lab.mesh(1, "attach", "10.32.0.1/12", c1)
    lab.mesh(2, "attach", "10.32.0.2/12", c2)
    lab.mesh(3, "attach", "--hostname", "evil", "10.32.0.3/12", c3)
    lab.wait_for(
        "c3's name everywhere",
        lambda: all(
            any(e["name"].startswith("evil.") for e in status(lab, i)["dns"]["entries"])
            for i in (1, 2)
        ),
        timeout=15,
    )
    lab.wait_for(
        "c3 reaches c1",
        lambda: lab.in_ns(c3, "ping", "-c1", "-W1", "10.32.0.1", check=False).returncode == 0,
        timeout=15,
    )
    # Garbage, and another CA's revocation: one line each, nothing changes.
    junk = lab.tmp / "junk.pem"
    junk.write_text("-----BEGIN MESH REVOCATION-----\nAAAA\n-----END MESH REVOCATION-----\n")
    rogue = lab.tmp / "rogue"
    lab.mesh(1, "ca", "init", str(rogue))
    lab.mesh(1, "ca", "sign", str(rogue), "h3")
    lab.mesh(1, "ca", "revoke", str(rogue), "h3")
    for bad_file in (junk, rogue / "revoke-h3.pem", lab.password_file):
        bad = lab.mesh(2, "revoke", "--file", str(bad_file), check=False)
        assert bad.returncode == 1
        assert "not a revocation of this mesh's CA" in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    assert connected_to(lab, 2, "h3")
    lab.mesh(1, "ca", "revoke", str(ca), "h3")
    # A steady stream from h3's container while it is revoked (bounded: 200 x 50 ms).
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", c3, "ping", "-c", "200", "-i", "0.05", "-W", "1", "10.32.0.1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1)
        started = time.monotonic()
        out = lab.mesh(2, "revoke", "--file", str(ca / "revoke-h3.pem"))
        assert "revoked h3" in out.stdout, out.stdout
        lab.wait_for(
            "no router connected to h3",
            lambda: (
                not any(connected_to(lab, i, "h3") for i in (1, 2))
                and not [c for c in status(lab, 3)["connections"] if c.get("peer")]
            ),
            timeout=5,
        )
        took = time.monotonic() - started
        print(f"h3 evicted everywhere {took:.1f}s after 'mesh revoke'")
    finally:
        got, _ = pinger.communicate(timeout=60)
    # It reached c1 before (1 s of 10), not after the eviction (5 s at most).
    received = int(re.search(r"(\d+) received", got).group(1))  # type: ignore[union-attr]
    assert 10 <= received <= 130, got[-300:]
    assert lab.in_ns(c3, "ping", "-c2", "-W1", "10.32.0.1", check=False).returncode != 0
    assert lab.in_ns(c1, "ping", "-c1", "-W1", "10.32.0.2", check=False).returncode == 0
    for i in (1, 2):
        names = [e["name"] for e in status(lab, i)["dns"]["entries"]]
        assert not any(n.startswith("evil.") for n in names), names
    # Its reconnect attempts are refused, and counted.
    lab.wait_for(
        "h3's redials refused",
        lambda: status(lab, 1)["counters"].get("handshakes_refused_revoked", 0) >= 1,
        timeout=30,
    )
    assert "revoked by the mesh CA" in (lab.state_dir(3) / "router.log").read_text()
    # Every router restarted keeps the revocation (h1 heard it from h2).
    for i in (1, 2):
        lab.mesh(i, "stop")
    launch_cert(lab, 1, ca, "h1")
    launch_cert(lab, 2, ca, "h2", lab.addr(1))
    lab.wait_for("h1 and h2 again", lambda: full_mesh(lab, 2), timeout=30)
    lab.mesh(3, "connect", lab.addr(2))
    time.sleep(4)
    assert not any(connected_to(lab, i, "h3") for i in (1, 2))
    assert status(lab, 1)["certs"]["revoked"] == 1
    assert lab.in_ns(c1, "ping", "-c1", "-W1", "10.32.0.2", check=False).returncode == 0


def test_a_certificate_is_renewed_under_a_running_stream(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    ca = cert_mesh(lab, 2)
    c1, c2 = lab.container("c1"), lab.container("c2")
    lab.mesh(1, "attach", "10.32.0.1/12", c1)
    lab.mesh(2, "attach", "10.32.0.2/12", c2)
    old = status(lab, 1)["certs"]["cert"]["fingerprint"]
    new_dir = lab.tmp / "renewed"
    lab.mesh(1, "ca", "sign", str(ca), "h1", "--out", str(new_dir))

    def renew() -> None:
        time.sleep(1)
        out = lab.mesh(
            1,
            "cert",
            "renew",
            "--cert",
            str(new_dir / "h1.crt"),
            "--key",
            str(new_dir / "h1.key"),
        )
        assert "certificate renewed" in out.stdout

    uptime = status(lab, 2)["connections"][0]["uptime"]
    sent, got = tcp_transfer(lab, c1, c2, "10.32.0.2", 4 << 20, pace=0.05, during=renew)
    assert sent == got
    st = status(lab, 1)
    assert st["certs"]["cert"]["fingerprint"] != old
    assert status(lab, 2)["connections"][0]["uptime"] > uptime  # no connection was lost
    # The next handshake shows the new certificate.
    lab.mesh(2, "stop")
    launch_cert(lab, 2, ca, "h2", lab.addr(1))
    lab.wait_for("again", lambda: full_mesh(lab, 2), timeout=30)
    (conn,) = [c for c in status(lab, 2)["connections"] if c.get("peer")]
    assert conn["cert"]["fingerprint"] == st["certs"]["cert"]["fingerprint"]
    bad = lab.mesh(
        1, "cert", "renew", "--cert", str(ca / "h2.crt"), "--key", str(ca / "h2.key"), check=False
    )
    assert bad.returncode == 1
    assert "a renewal keeps the name" in bad.stderr, bad.stderr


def test_a_password_mesh_moves_to_certificates_live_under_a_stream(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(4)
    lab.launch(1)
    lab.launch(2, lab.addr(1))
    lab.launch(3, lab.addr(1))
    lab.wait_for("full mesh", lambda: full_mesh(lab, 3), timeout=30)
    c1, c3 = lab.container("c1"), lab.container("c3")
    lab.mesh(1, "attach", "10.32.0.1/12", c1)
    lab.mesh(3, "attach", "10.32.0.3/12", c3)
    lab.wait_for(
        "c1 reaches c3",
        lambda: lab.in_ns(c1, "ping", "-c1", "-W1", "10.32.0.3", check=False).returncode == 0,
        timeout=15,
    )
    ca = lab.tmp / "ca"
    lab.mesh(1, "ca", "init", str(ca))
    who = {i: (status(lab, i)["name"], status(lab, i)["nickname"]) for i in (1, 2, 3)}
    for peer, nick in who.values():  # each host keeps its name: its addresses stay its own
        lab.mesh(1, "ca", "sign", str(ca), nick, "--peer-name", peer)
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", c1, "ping", "-c", "400", "-i", "0.05", "-W", "1", "10.32.0.3"],
        stdout=subprocess.PIPE,
        text=True,
    )

    def migrate() -> None:
        for i in (2, 3, 1):  # host by host, each on its running router
            nick = who[i][1]
            out = lab.mesh(
                i,
                "cert",
                "renew",
                "--cert",
                str(ca / f"{nick}.crt"),
                "--key",
                str(ca / f"{nick}.key"),
                "--ca",
                str(ca / "ca.crt"),
            )
            assert "certificate installed" in out.stdout, out.stdout
            time.sleep(1)
        lab.wait_for(
            "every connection made by certificate",
            lambda: all(
                {c.get("auth") for c in status(lab, i)["connections"]} == {"certificate"}
                and full_mesh(lab, 3)
                for i in (1, 2, 3)
            ),
            timeout=60,
        )
        out = lab.mesh(2, "password", "retire")
        assert "the password is retired" in out.stdout
        lab.wait_for(
            "the password refused everywhere",
            lambda: not any(status(lab, i)["certs"]["password_accepted"] for i in (1, 2, 3)),
            timeout=10,
        )

    try:
        sent, got = tcp_transfer(lab, c1, c3, "10.32.0.3", 4 << 20, pace=0.2, during=migrate)
    finally:
        pings, _ = pinger.communicate(timeout=60)
    assert sent == got
    loss = float(re.search(r"([\d.]+)% packet loss", pings).group(1))  # type: ignore[union-attr]
    print(f"ping loss while the mesh moved to certificates: {loss}%")
    assert loss <= 2, pings[-300:]  # make before break
    for i in (1, 2, 3):
        assert status(lab, i)["name"] == who[i][0]
    assert full_mesh(lab, 3)
    # Now a host with the password alone is refused, saying why.
    lab.launch(4, lab.addr(1))
    lab.wait_for(
        "the password-only host told why",
        lambda: "only hosts with a certificate" in (lab.state_dir(4) / "router.log").read_text(),
        timeout=20,
    )
    # A restart keeps the password retired (the launch still names the password file).
    lab.mesh(3, "stop")
    nick = who[3][1]
    lab.mesh(
        3,
        "launch",
        "--cert",
        str(ca / f"{nick}.crt"),
        "--key",
        str(ca / f"{nick}.key"),
        "--ca",
        str(ca / "ca.crt"),
        "--password-file",
        str(lab.password_file),
        "--dns-upstream",
        NO_UPSTREAM,
        lab.addr(1),
    )
    lab.wait_for("h3 back", lambda: full_mesh(lab, 3), timeout=30)
    assert not status(lab, 3)["certs"]["password_accepted"]
