"""Certificates in the mesh core, with no network: a revocation floods, evicts
and is refused again; a renewal keeps connections; the name is the
certificate's."""

from __future__ import annotations

import pytest

from meshrouter.base.errors import BadPacket
from meshrouter.proto import cert as mc
from meshrouter.proto.control import MessageType
from meshrouter.testing.control import MeshCa
from meshrouter.testing.fakes import MeshNet, address, name

from .test_mesh import establish


def cert_net(n: int) -> tuple[MeshNet, MeshCa]:
    ca = MeshCa()
    net = MeshNet(n, ca=ca, ipam="fake")
    establish(net, *[(i, j) for i in range(1, n + 1) for j in range(i + 1, n + 1)])
    return net, ca


def test_hosts_on_certificates_make_a_full_mesh_and_see_each_others_certificates() -> None:
    net, _ = cert_net(3)
    for i in (1, 2, 3):
        conns = net.mesh(i).peers
        assert len(conns) == 2
        for conn in conns.values():
            assert conn.result is not None
            assert conn.result.cert is not None
            assert conn.result.cert.name == conn.name
            assert conn.result.psk == b""


def test_a_revocation_floods_closes_every_connection_to_the_host_and_bans_it() -> None:
    net, ca = cert_net(4)
    h4, _ = ca.host(4)
    rev = mc.revoke(ca.seed, [h4], 100)
    certs = net.mesh(2).certs
    assert certs is not None
    assert certs.revoke(rev, net.now) == [name(4)]
    for _ in range(4):
        net.tick()
    for i in (1, 2, 3):
        assert name(4) not in net.mesh(i).peers, i
        assert net.mesh(i).certs is not None
        assert h4.fingerprint in net.mesh(i).certs.trust.revoked  # type: ignore[union-attr]
        assert (i, name(4)) in net.evicted
        assert name(4) in net.mesh(i).maker.evicted
    assert not net.mesh(4).peers
    assert net.mesh(1).counters["connections_closed_revoked"] >= 1
    # Its redials are refused and counted.
    net.dial(4, 1)
    net.tick()
    assert name(4) not in net.mesh(1).peers
    assert net.mesh(1).counters["handshakes_refused_revoked"] >= 1
    # The others stay a full mesh.
    assert all(len(net.mesh(i).peers) == 2 for i in (1, 2, 3))


def test_a_revocation_from_another_ca_or_garbage_is_refused_and_counted() -> None:
    net, _ = cert_net(2)
    rogue = MeshCa("rogue")
    other = mc.revoke(rogue.seed, [rogue.host(2)[0]], 5)
    with pytest.raises(BadPacket):
        net.mesh(1).certs.revoke(other, net.now)  # type: ignore[union-attr]
    conn = net.mesh(2).peers[name(1)]
    for payload in (other.raw, b"junk", b""):
        net.mesh(2).send_message(conn, MessageType.REVOKE, payload)
    net.tick()
    assert net.mesh(1).counters["revocations_bad"] == 3
    assert name(2) in net.mesh(1).peers  # nothing else happened


def test_a_new_neighbour_is_sent_the_revocations_held() -> None:
    net, ca = cert_net(2)
    h3 = ca.host(3)[0]
    net.mesh(1).certs.revoke(mc.revoke(ca.seed, [h3], 5), net.now)  # type: ignore[union-attr]
    net.tick()
    assert h3.fingerprint in net.mesh(2).certs.trust.revoked  # type: ignore[union-attr]
    net.restart(2)  # a new process, without the revocation
    establish(net, (2, 1))
    net.tick()
    assert h3.fingerprint in net.mesh(2).certs.trust.revoked  # type: ignore[union-attr]


def test_a_renewal_keeps_connections_and_the_next_handshake_shows_the_new_certificate() -> None:
    net, ca = cert_net(2)
    certs = net.mesh(1).certs
    assert certs is not None
    seed = bytes(range(32))
    new = mc.issue(
        ca.seed,
        name=name(1),
        nickname="host1",
        public_key=mc.public_key_of(seed),
        not_before=0,
        not_after=2**40,
    )
    before = net.mesh(1).peers[name(2)]
    certs.renew(new, seed, mc.Trust.of([ca.cert]))
    net.tick()
    assert net.mesh(1).peers[name(2)] is before
    net.restart(2)
    establish(net, (2, 1))
    res = net.mesh(2).peers[name(1)].result
    assert res is not None
    assert res.cert is not None
    assert res.cert.fingerprint == new.fingerprint
    wrong, wrong_seed = ca.host(2)
    with pytest.raises(ValueError, match="a renewal keeps the name"):
        certs.renew(wrong, wrong_seed, mc.Trust.of([ca.cert]))


def test_a_reinstalled_host_with_a_new_certificate_is_admitted_again() -> None:
    net, ca = cert_net(2)
    h2, _ = ca.host(2)
    net.mesh(1).certs.revoke(mc.revoke(ca.seed, [h2], 5), net.now)  # type: ignore[union-attr]
    net.tick()
    assert name(2) not in net.mesh(1).peers
    assert name(2) in net.dns(1).records.banned
    net.restart(2)  # re-installed: the same CA gives it a new key and certificate
    net.mesh(2).certs.seed = bytes([9]) * 32  # type: ignore[union-attr]
    new = mc.issue(
        ca.seed,
        name=name(2),
        nickname="host2",
        public_key=mc.public_key_of(bytes([9]) * 32),
        not_before=0,
        not_after=2**40,
    )
    net.mesh(2).certs.cert = new  # type: ignore[union-attr]
    establish(net, (2, 1))
    assert name(2) in net.mesh(1).peers
    assert name(2) not in net.mesh(1).maker.evicted
    assert name(2) not in net.dns(1).records.banned


def install(net: MeshNet, ca: MeshCa, i: int) -> None:
    host, key = ca.host(i)
    net.mesh(i).install_certs(host, key, mc.Trust.of([ca.cert]), 1e9, net.now)


def auths(net: MeshNet, i: int) -> set[bool]:
    return {c.result is not None and c.result.cert is not None for c in net.mesh(i).peers.values()}


def test_a_password_mesh_moves_to_certificates_live_and_then_refuses_the_password() -> None:
    ca = MeshCa()
    net = MeshNet(3, ipam="fake")
    for a, b in ((1, 2), (1, 3), (2, 3)):  # the diallers hold targets, as in life
        net.dial(a, b, target=address(b))
        net.exchange_heartbeats(a, b)
    install(net, ca, 1)
    install(net, ca, 2)
    for _ in range(30):
        net.tick()
    # h1-h2 moved to certificates; h3 (no certificate yet) stays on the password.
    assert net.mesh(1).peers[name(2)].result.cert is not None  # type: ignore[union-attr]
    assert net.mesh(1).peers[name(3)].result.cert is None  # type: ignore[union-attr]
    assert (
        net.mesh(1).counters["upgrades_to_certificates"]
        + net.mesh(2).counters["upgrades_to_certificates"]
        >= 1
    )
    with pytest.raises(ValueError, match="no certificate"):
        net.mesh(3).retire_password(net.now)
    install(net, ca, 3)
    for _ in range(30):
        net.tick()
    assert all(auths(net, i) == {True} for i in (1, 2, 3))
    assert all(len(net.mesh(i).peers) == 2 for i in (1, 2, 3))
    # Retired on one: the mesh carries it; a password-only newcomer is refused.
    net.mesh(2).retire_password(net.now)
    net.tick()
    assert not any(net.mesh(i).password for i in (1, 2, 3))
    assert all(len(net.mesh(i).peers) == 2 for i in (1, 2, 3))  # nothing lost


def test_a_password_only_router_ignores_a_retirement() -> None:
    ca = MeshCa()
    net = MeshNet(2, ipam="fake")
    establish(net, (1, 2))
    install(net, ca, 1)
    conn = net.mesh(1).peers[name(2)]
    net.mesh(1).send_message(conn, 12, b"")  # RETIRE_PASSWORD over a password connection
    net.tick()
    assert net.mesh(2).password
    assert net.mesh(2).counters["password_retire_ignored"] == 1
    assert net.mesh(1).password
