"""Hosts behind NATs (namespaces as home routers: nftables masquerade, only
answers let in): each host learns how its peers see it, a NAT that maps per
destination is named, and two hosts behind one NAT talk directly over their
private addresses, not through the third peer."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable

import pytest

from meshrouter.contract.status import ConnectionStatus
from meshrouter.testing.netlab import Lab, status, tcp_transfer

pytestmark = [pytest.mark.netns, pytest.mark.slow]

LabFactory = Callable[..., Lab]


def peers_of(lab: Lab, i: int) -> dict[str, str]:
    """Established connections of host i: nickname -> address."""
    return {
        str(c.get("nickname")): c["address"]
        for c in status(lab, i)["connections"]
        if c["state"] == "established"
    }


def connection(lab: Lab, i: int, nick: str) -> ConnectionStatus | None:
    """Host i's connection to ``nick``, if it has one."""
    return next((c for c in status(lab, i)["connections"] if c.get("nickname") == nick), None)


def containers(
    lab: Lab, what: str = "c2 reaches c3", hosts: tuple[int, int] = (2, 3)
) -> tuple[str, str]:
    """A container cI on each host I of ``hosts`` (at 10.32.0.I), attached,
    the first reaching the second."""
    a, b = hosts
    ca, cb = lab.container(f"c{a}"), lab.container(f"c{b}")
    lab.mesh(a, "attach", f"10.32.0.{a}/12", ca)
    lab.mesh(b, "attach", f"10.32.0.{b}/12", cb)
    lab.wait_for(
        what,
        lambda: lab.in_ns(ca, "ping", "-c1", "-W1", f"10.32.0.{b}", check=False).returncode == 0,
        timeout=20,
    )
    return ca, cb


def through_h1(lab: Lab, c2: str, c3: str, size: int) -> int:
    """Bytes that crossed h1's underlay interface while ``size`` bytes went
    from c2 to c3, intact."""
    before = lab.wan_bytes(1)
    sent, got = tcp_transfer(lab, c2, c3, "10.32.0.3", size)
    assert sent == got
    return lab.wan_bytes(1) - before


def test_each_host_learns_how_it_is_seen_and_a_symmetric_nat_is_named(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(4, nat={2: "a", 3: "b"}, symmetric=frozenset({"b"}))
    lab.launch(1)
    for i in (2, 3, 4):
        lab.launch(i, lab.addr(1))
    nick = {i: status(lab, i)["nickname"] for i in (1, 2, 3, 4)}

    def settled() -> bool:
        return all(len(peers_of(lab, i)) >= 2 for i in (2, 3)) and all(
            len(status(lab, i)["nat"]["seen_udp"]) >= 1 for i in (2, 3)
        )

    lab.wait_for("h2 and h3 connected to h1 and h4", settled, timeout=40)
    lab.wait_for(
        "h3 seen with two ports",
        lambda: status(lab, 3)["nat"]["symmetric"],
        timeout=20,
    )
    nat2 = status(lab, 2)["nat"]
    assert nat2["behind_nat"]
    assert not nat2["symmetric"]
    # One mapping, whoever looks, and the router's own port: a NAT that keeps
    # ports keeps it, since no peer sent to it before h2's datagrams left.
    (seen,) = nat2["seen_udp"]
    assert seen == lab.public("a") + ":6783", nat2
    assert sorted(nat2["seen_udp"][seen]) == sorted([nick[1], nick[4]])
    nat3 = status(lab, 3)["nat"]
    assert nat3["behind_nat"]
    assert len(nat3["seen_udp"]) == 2, nat3
    assert all(a.startswith(lab.public("b") + ":") for a in nat3["seen_udp"])
    h1 = {c.get("nickname"): c for c in status(lab, 1)["connections"]}
    assert h1[nick[2]]["address"].startswith(lab.public("a") + ":")
    assert "behind a NAT" in lab.mesh(2, "status").stdout
    doctor = lab.mesh(3, "doctor", check=False).stdout
    assert "maps UDP per destination" in doctor, doctor
    assert nat2 == status(lab, 2)["nat"]  # steady
    assert not status(lab, 1)["nat"]["behind_nat"]
    # h2 and h3 cannot reach each other directly: their containers' traffic is relayed.
    containers(lab, "c2 reaches c3 through a relay")
    assert nick[3] not in peers_of(lab, 2)
    # No candidate behind a NAT that maps per destination: nothing to punch to.
    # (h3 may offer one while a single peer has seen it: one try, which fails.)
    lab.wait_for("h3 offers no candidate", lambda: status(lab, 3)["nat"]["candidate"] == "", 20)
    assert status(lab, 2)["nat"]["punching"].get(nick[3]) != "punched"
    p3 = next(p for p in status(lab, 2)["peers"] if p["nickname"] == nick[3])
    assert p3["via"] is not None  # shown as relayed
    assert "via " in lab.mesh(2, "status", "peers").stdout


def sealed_end_to_end(lab: Lab, i: int, nick: str) -> bool:
    p = next((p for p in status(lab, i)["peers"] if p["nickname"] == nick), None)
    return p is not None and p["via"] is not None and p["sealed"] == "end to end"


def test_behind_a_symmetric_nat_traffic_is_relayed_sealed_end_to_end(
    lab_factory: LabFactory,
) -> None:
    """h3's NAT maps per destination: nothing punches through it, so h2's
    and h3's containers are relayed by h1.  h2 and h3 hold keys of their own
    (a connection through h1) and seal their frames with them inside h1's
    hops: h1 passes on what it cannot read (its counters say every relayed
    message of the transfer was one), and the transfer is intact."""
    lab = lab_factory(3, nat={2: "a", 3: "b"}, symmetric=frozenset({"b"}))
    lab.launch(1)
    lab.launch(2, lab.addr(1))
    lab.launch(3, lab.addr(1))
    nick = {i: status(lab, i)["nickname"] for i in (1, 2, 3)}
    lab.wait_for(
        "h2 and h3 sealing end to end through h1",
        lambda: sealed_end_to_end(lab, 2, nick[3]) and sealed_end_to_end(lab, 3, nick[2]),
        timeout=60,
    )
    assert "sealed end to end" in lab.mesh(2, "status", "peers").stdout
    c2, c3 = containers(lab)
    before = status(lab, 1)["counters"]
    sent, got = tcp_transfer(lab, c2, c3, "10.32.0.3", 8 << 20)
    assert sent == got
    after = status(lab, 1)["counters"]
    relayed = after["messages_relayed"] - before.get("messages_relayed", 0)
    unread = after.get("relayed_unread", 0) - before.get("relayed_unread", 0)
    print(f"h1 relayed {relayed} messages of an 8 MiB transfer, {unread} of them unread")
    assert relayed > 5000
    assert unread >= relayed - 50  # a broadcast or two (ARP) is the mesh's, not sealed
    assert status(lab, 2)["counters"]["sealed_end_to_end"] > 0
    assert status(lab, 3)["counters"]["opened_end_to_end"] > 0
    assert not any(status(lab, i)["drops"] for i in (2, 3)), [
        status(lab, i)["drops"] for i in (2, 3)
    ]


def test_two_hosts_behind_one_nat_talk_directly_over_their_private_addresses(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(3, nat={2: "a", 3: "a"})
    lab.launch(1)
    lab.launch(2, lab.addr(1))
    lab.launch(3, lab.addr(1))
    nick2, nick3 = status(lab, 2)["nickname"], status(lab, 3)["nickname"]
    lab.wait_for(
        "h2 and h3 connected directly",
        lambda: nick3 in peers_of(lab, 2) and len(peers_of(lab, 2)) == 2,
        timeout=40,
    )
    assert peers_of(lab, 2)[nick3].startswith("10.99.1.3:"), peers_of(lab, 2)
    lab.wait_for("h2's route to h3 direct", lambda: direct(lab, 2, nick3), timeout=10)
    lab.wait_for("h3's route to h2 direct", lambda: direct(lab, 3, nick2), timeout=10)
    c2, c3 = containers(lab)
    crossed = through_h1(lab, c2, c3, 8 << 20)
    print(f"bytes through h1 during an 8 MiB transfer between h2 and h3: {crossed}")
    assert crossed < 1 << 20


def direct(lab: Lab, i: int, nick: str) -> bool:
    """Host i's data to ``nick`` goes direct: once both ends' records show
    their connection, a moment after it is established."""
    p = next(p for p in status(lab, i)["peers"] if p["nickname"] == nick)
    return p["via"] is None


def punched(lab: Lab, nick: dict[int, str]) -> bool:
    """h2's connection to h3 is made through h1 and carries UDP both ways."""
    c = connection(lab, 2, nick[3])
    return c is not None and c["state"] == "established" and c.get("relay") == nick[1]


def two_nats(lab: Lab) -> dict[int, str]:
    lab.launch(1)
    lab.launch(2, lab.addr(1))
    lab.launch(3, lab.addr(1))
    nick = {i: status(lab, i)["nickname"] for i in (1, 2, 3)}
    lab.wait_for("h2 and h3 punched through their NATs", lambda: punched(lab, nick), timeout=60)
    return nick


def test_two_hosts_behind_two_nats_punch_a_direct_path(lab_factory: LabFactory) -> None:
    """h2 and h3 behind NATs of their own, each told only of h1: they dial
    each other through h1, punch UDP through both NATs, and their containers'
    traffic goes direct (h1's interface counts what crosses it)."""
    lab = lab_factory(3, nat={2: "a", 3: "b"})
    nick = two_nats(lab)
    at2 = connection(lab, 2, nick[3])
    assert at2 is not None
    assert at2["udp_address"] == lab.public("b") + ":6783", at2
    lab.wait_for("h2's route to h3 direct", lambda: direct(lab, 2, nick[3]), timeout=10)
    assert "punched, dialled through" in lab.mesh(2, "status", "connections").stdout
    c2, c3 = containers(lab)
    crossed = through_h1(lab, c2, c3, 8 << 20)
    print(f"bytes through h1 during an 8 MiB transfer between two NATed hosts: {crossed}")
    assert crossed < 1 << 20


def test_a_nat_reboot_sends_traffic_through_the_relay_then_direct_again(
    lab_factory: LabFactory,
) -> None:
    """h2's NAT reboots (every mapping gone) and maps to other ports since:
    the punched path breaks, c2's pings to c3 go on through h1 within
    seconds, the two punch again to h2's new port and go direct."""
    lab = lab_factory(3, nat={2: "a", 3: "b"})
    nick = two_nats(lab)
    c2, c3 = containers(lab)
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", c2, "ping", "-c", "300", "-i", "0.1", "-W", "1", "10.32.0.3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    down: float | None = None  # when the punched path was seen broken
    again: float | None = None  # ... and punched again
    try:
        time.sleep(2)
        lab.reboot_nat("a", ports="20000-29999")
        rebooted = time.monotonic()
        while pinger.poll() is None and time.monotonic() - rebooted < 60:
            if down is None and not punched(lab, nick):
                down = time.monotonic()
            elif down is not None and again is None and punched(lab, nick):
                again = time.monotonic()
            time.sleep(0.3)
        out, _ = pinger.communicate(timeout=60)
    finally:
        pinger.kill()
    lost = 300 - int(re.search(r"(\d+) received", out).group(1))  # type: ignore[union-attr]
    print(f"pings lost (10/s) across the NAT's reboot: {lost} of 300")
    assert lost <= 100, out  # 10 s at most without a path
    lab.wait_for("h2 and h3 punched again", lambda: punched(lab, nick), timeout=90)
    again = again or time.monotonic()
    print(
        f"the punched path seen down {(down or again) - rebooted:.1f}s after the reboot, "
        f"punched again at {again - rebooted:.1f}s"
    )
    at2 = connection(lab, 3, nick[2])
    assert at2 is not None
    host, port = str(at2["udp_address"]).rsplit(":", 1)
    assert host == lab.public("a")
    assert 20000 <= int(port) <= 29999, at2
    assert through_h1(lab, c2, c3, 4 << 20) < 1 << 20


def test_a_host_with_a_port_forward_and_nat_public_is_dialled_directly(
    lab_factory: LabFactory,
) -> None:
    """h2 behind a NAT that maps per destination (nothing can be punched
    through it) forwards TCP and UDP 6783 to h2, which is launched with
    ``--nat-public``: h3, behind a NAT of its own and told only of h1, dials
    h2 at the forward, and their containers' traffic goes direct."""
    lab = lab_factory(3, nat={2: "a", 3: "b"}, symmetric=frozenset({"a"}), forward={"a": 2})
    public = lab.public("a") + ":6783"
    lab.launch(1)
    lab.launch(2, lab.addr(1), extra=("--nat-public", lab.public("a")))
    lab.launch(3, lab.addr(1))
    nick = {i: status(lab, i)["nickname"] for i in (1, 2, 3)}

    def dialled() -> bool:
        c = connection(lab, 3, nick[2])
        return c is not None and c["state"] == "established" and c["address"] == public

    lab.wait_for("h3 connected to h2 at its public address", dialled, timeout=60)
    at3 = connection(lab, 3, nick[2])
    assert at3 is not None
    assert at3.get("relay") is None, at3  # a connection of its own, not through h1
    assert at3["udp_address"] == public, at3
    lab.wait_for("h3's route to h2 direct", lambda: direct(lab, 3, nick[2]), timeout=20)
    lab.wait_for("h2's route to h3 direct", lambda: direct(lab, 2, nick[3]), timeout=20)
    nat2 = status(lab, 2)["nat"]
    assert nat2["public"] == [public]
    assert nat2["candidate"] == ""  # dialled, never punched to
    assert f"Public at: {public}" in lab.mesh(2, "status").stdout
    doctor = lab.mesh(2, "doctor", check=False).stdout
    assert "maps UDP per destination" not in doctor, doctor  # that is what the forward is for
    c2, c3 = containers(lab)
    crossed = through_h1(lab, c2, c3, 8 << 20)
    print(f"bytes through h1 during an 8 MiB transfer to a host at its port forward: {crossed}")
    assert crossed < 1 << 20


def test_a_router_launched_with_relay_no_is_routed_around(lab_factory: LabFactory) -> None:
    """h3 and h4 behind NATs that map per destination (no direct path, no
    punching) both reach h1 and h2, two equally short relays; routes take
    the one with the smaller name.  Relaunched with ``--relay no``, it is
    routed around: the other carries the traffic, both ways."""
    lab = lab_factory(4, nat={3: "a", 4: "b"}, symmetric=frozenset({"a", "b"}))
    lab.launch(1)
    lab.launch(2, lab.addr(1))
    lab.launch(3, lab.addr(1))
    lab.launch(4, lab.addr(1))
    name = {i: status(lab, i)["name"] for i in (1, 2, 3, 4)}

    def via(i: int, j: int) -> str | None:
        p = next((p for p in status(lab, i)["peers"] if p["peer"] == name[j]), None)
        return None if p is None else p["via"]

    def relayed_by(k: int) -> bool:
        return via(3, 4) == name[k] and via(4, 3) == name[k]

    first = 1 if name[1] < name[2] else 2
    other = 3 - first
    lab.wait_for(f"h3 and h4 relayed by h{first}", lambda: relayed_by(first), timeout=60)
    lab.mesh(first, "stop")
    extra = ("--relay", "no")
    lab.launch(first, *([lab.addr(other)] if first == 2 else []), extra=extra)
    assert "Relays: never for others" in lab.mesh(first, "status").stdout
    assert status(lab, first)["relay"] == "no"
    lab.wait_for(f"h3 and h4 relayed by h{other}", lambda: relayed_by(other), timeout=60)
    nick = status(lab, first)["nickname"]
    lab.wait_for(
        f"h3 and h4 connected to h{first} again",
        lambda: all(nick in peers_of(lab, i) for i in (3, 4)),
        timeout=60,
    )  # the addresses asked for may be in its share
    c3, c4 = containers(lab, "c3 reaches c4", hosts=(3, 4))
    before = {k: lab.wan_bytes(k) for k in (first, other)}
    sent, got = tcp_transfer(lab, c3, c4, "10.32.0.4", 8 << 20)
    assert sent == got
    crossed = {k: lab.wan_bytes(k) - before[k] for k in (first, other)}
    print(
        f"bytes of an 8 MiB relayed transfer: {crossed[first]} through the --relay no host, "
        f"{crossed[other]} through the other"
    )
    assert crossed[first] < 1 << 20
    assert crossed[other] > 16 << 20  # in and out
    assert relayed_by(other)
