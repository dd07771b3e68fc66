"""mesh doctor's findings from a status and host facts (no I/O)."""

from __future__ import annotations

from typing import Any, cast

from launcher.doctor import FAIL, OK, WARN, HostFacts, diagnose
from meshrouter.contract.status import RouterStatus

GOOD = HostFacts(bridge_up=True, tap_on_bridge=True, tun_device=True, nft=True, ip_forward=True)


def conn(**kw: Any) -> dict[str, Any]:
    c = {
        "peer": "02:00:00:00:00:02",
        "nickname": "h2",
        "address": "198.18.0.2:6783",
        "udp_address": "198.18.0.2:6783",
        "state": "established",
        "cipher": "aegis128l",
        "datagram_size": 1472,
        "pmtu_confirmed": True,
        "clock_skew": 0.01,
        "peer_version": "0.1.0",
    }
    c.update(kw)
    return c


def status(**kw: Any) -> RouterStatus:
    st: dict[str, Any] = {
        "name": "02:00:00:00:00:01",
        "nickname": "h1",
        "version": "0.1.0",
        "bridge": "mesh",
        "tap": "meshtap",
        "mtu": 1376,
        "offload": {"tap": True, "udp_gso": True, "udp_gro": True, "gso_sends": 0},
        "dataplane": "c",
        "dataplane_built": True,
        "ipam": {"ready": True, "range": "10.32.0.0/12", "quorum": 1, "init_count": 1},
        "dns": {"enabled": True, "domain": "mesh.local.", "address": "169.254.53.53"},
        "expose": {"addresses": [], "masquerade": False},
        "targets": [],
        "connections": [conn()],
        "peers": [{"peer": "02:00:00:00:00:02", "nickname": "h2", "reachable": True}],
        "counters": {},
        "drops": {},
    }
    st.update(kw)
    return cast(RouterStatus, st)


def levels(findings: list[Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {OK: [], WARN: [], FAIL: []}
    for f in findings:
        out[f.level].append(f.line())
    return out


def test_a_healthy_host_has_no_warnings() -> None:
    found = levels(diagnose(status(), GOOD))
    assert found[FAIL] == []
    assert found[WARN] == []
    assert any("h2: established" in line for line in found[OK])


def test_a_router_without_its_c_loop_is_a_warning_only_when_it_was_not_built() -> None:
    found = levels(diagnose(status(dataplane="python", dataplane_built=False), GOOD))
    assert found[FAIL] == []
    (line,) = found[WARN]
    assert "C data plane is not built" in line
    assert "install gcc" in line
    chosen = levels(diagnose(status(dataplane="python", dataplane_built=True), GOOD))
    assert chosen[WARN] == []  # --dataplane python was the operator's choice


def test_address_agreement_in_progress_is_a_warning_not_a_failure() -> None:
    ipam = {"ready": False, "range": "10.32.0.0/12", "quorum": 2, "init_count": 3}
    peers = [
        {"peer": "02:00:00:00:00:01", "nickname": "h1", "reachable": True},
        {"peer": "02:00:00:00:00:02", "nickname": "h2", "reachable": True},
    ]
    found = levels(diagnose(status(ipam=ipam, peers=peers), GOOD))
    assert found[FAIL] == []
    assert any("agreeing on address ownership" in line for line in found[WARN])


def test_each_problem_is_one_line_with_what_to_do() -> None:
    st = status(
        connections=[
            conn(state="pending"),
            conn(nickname="h3", datagram_size=1200, clock_skew=-4.2, peer_version="0.2.0"),
            conn(nickname="h4", path="fallback"),
        ],
        targets=[
            {"address": "198.18.0.4:6783", "state": "retrying", "last_error": "Connection refused"},
            {
                "address": "198.18.0.5:6783",
                "state": "retrying",
                "last_error": "peer closed: authentication failed: the peer does not know "
                "the mesh password",
            },
        ],
        peers=[
            {"peer": "02:00:00:00:00:09", "nickname": "h9", "reachable": False},
            {"peer": "02:00:00:00:00:08", "nickname": "h8", "reachable": False},
        ],
        ipam={
            "ready": False,
            "range": "10.32.0.0/12",
            "quorum": 2,
            "init_count": 3,
            "reclaim_after": 1800,
            "shares": [{"peer": "02:00:00:00:00:08", "unreachable_for": 300.0}],
        },
        expose={"addresses": ["10.32.0.9/12"], "masquerade": True},
        counters={"handshake_failures": 3},
        offload={"tap": True, "udp_gso": False, "udp_gro": True, "gso_sends": 0},
    )
    facts = HostFacts(
        bridge_up=False, tap_on_bridge=False, tun_device=False, nft=False, ip_forward=False
    )
    found = levels(diagnose(st, facts))
    fails = "\n".join(found[FAIL])
    warns = "\n".join(found[WARN])
    for words in (
        "h2: UDP does not flow both ways: open UDP port 6783",
        "cannot connect to 198.18.0.4:6783 (Connection refused)",
        "198.18.0.5:6783 refuses our password",
        "not agreed on address ownership: connect 2 of the 3",
        "IP forwarding is off",
        "bridge mesh is down",
        "TAP meshtap is not on bridge mesh",
        "/dev/net/tun is missing",
    ):
        assert words in fails, words
    for words in (
        "h3: path MTU 1200 is below the 1464",
        "h3: its clock is -4.2 s from ours: run NTP",
        "h3 runs meshrouter 0.2.0",
        "h4: trusted, but the kernel path fails (the router carries it, encrypted and "
        "slower): open UDP port 6784 between the hosts, with room for 1440-byte datagrams",
        "peer h9 (02:00:00:00:00:09) is unreachable: if it is gone for good: mesh rmpeer h9",
        "peer h8 (02:00:00:00:00:08) is unreachable: its address share is taken over in "
        "1500s unless it returns; if it is gone for good: mesh rmpeer h8",
        "3 handshake(s) failed",
        "kernel offloads off: udp_gso",
        "nft is not installed",
    ):
        assert words in warns, words


def cert(name: str, expires: float) -> dict[str, Any]:
    return {"name": name, "fingerprint": "ab" * 32, "expires": expires, "not_before": 0.0}


NOW = 1_800_000_000.0


def on_certs(*conns: dict[str, Any], own_expires: float = NOW + 90 * 86400, pw: bool = False):  # type: ignore[no-untyped-def]
    return status(
        start_time=NOW - 100,
        uptime=100.0,
        certs={"cert": cert("h1", own_expires), "cas": [], "revoked": 0, "password_accepted": pw},
        connections=list(conns),
    )


def test_a_certificate_that_expires_within_14_days_is_a_warning_saying_how_to_renew() -> None:
    fine = conn(auth="certificate", cert=cert("h2", NOW + 30 * 86400))
    found = levels(diagnose(on_certs(fine), GOOD))
    assert found[WARN] == []
    assert any("on certificates: h1" in line for line in found[OK])
    soon = conn(auth="certificate", cert=cert("h2", NOW + 3 * 86400))
    found = levels(diagnose(on_certs(soon, own_expires=NOW + 86400), GOOD))
    assert len(found[WARN]) == 2
    assert "this host's certificate" in found[WARN][0]
    assert "in 1.0 days" in found[WARN][0]
    assert "h2's certificate" in found[WARN][1]
    assert "mesh cert renew" in found[WARN][1]


def test_peers_still_on_the_password_during_a_migration_are_named() -> None:
    found = levels(
        diagnose(on_certs(conn(auth="password"), conn(auth="password", nickname="h3")), GOOD)
    )
    (line,) = found[WARN]
    assert "peers still on the password: h2, h3" in line
    found = levels(
        diagnose(on_certs(conn(auth="certificate", cert=cert("h2", NOW + 9e6)), pw=True), GOOD)
    )
    (line,) = found[WARN]
    assert "still accepts the password" in line


def test_a_revoked_peer_is_reported_as_evicted_not_as_unreachable() -> None:
    st = on_certs(conn(auth="certificate", cert=cert("h2", NOW + 9e6)))
    st["certs"]["evicted"] = ["02:00:00:00:00:03"]  # type: ignore[index]
    st["peers"] = [
        {"peer": "02:00:00:00:00:02", "nickname": "h2", "reachable": True},
        {"peer": "02:00:00:00:00:03", "nickname": "h3", "reachable": False},
    ]
    st["counters"] = {"handshake_failures": 2}
    found = levels(diagnose(st, GOOD))
    assert any("h3 (02:00:00:00:00:03) is revoked" in line for line in found[OK])
    assert not any("unreachable" in line for line in found[WARN])
    assert any("refused for its certificate" in line for line in found[WARN])


def test_behind_nats_a_relayed_peer_and_a_private_address_of_another_site_fail_nothing() -> None:
    """A host behind a NAT: its connection to a peer behind another goes
    through h1 (no UDP punched: relayed, sealed end to end) and the private
    address that peer's record gives does not answer.  Neither is a
    failure; a target the operator gave that does not answer still is."""
    st = status(
        connections=[conn(), conn(nickname="h3", state="pending", relay="h1")],
        targets=[
            {
                "address": "10.99.1.3:6783",
                "state": "waiting",
                "discovered": True,
                "last_error": "all attempts to connect to 10.99.1.3:6783 failed",
            },
            {
                "address": "10.99.1.4:6783",
                "state": "connecting",
                "discovered": True,
                "last_error": None,
            },
            {"address": "198.18.0.4:6783", "state": "waiting", "last_error": "refused"},
        ],
    )
    facts = HostFacts(
        bridge_up=True, tap_on_bridge=True, tun_device=True, nft=True, ip_forward=True
    )
    found = levels(diagnose(st, facts))
    assert len(found[FAIL]) == 1
    assert "cannot connect to 198.18.0.4:6783 (refused)" in found[FAIL][0]
    assert any("h3: through h1, its traffic sealed end to end" in f for f in found[OK])
    assert any("10.99.1.3:6783, an address a peer's gossip gives" in w for w in found[WARN])
    assert not any("10.99.1.4" in line for lines in found.values() for line in lines)
