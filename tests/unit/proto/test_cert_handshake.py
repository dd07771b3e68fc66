"""The handshake with host certificates: who may be whom, and why not."""

from __future__ import annotations

import dataclasses

from meshrouter.proto.control import State
from meshrouter.proto.handshake import AUTH_CERT, AUTH_PASSWORD, Credentials
from meshrouter.testing.control import ConnectionPair, MeshCa, identity

BOTH = AUTH_PASSWORD | AUTH_CERT


def pair(creds_a: Credentials | None, creds_b: Credentials | None, **kw: object) -> ConnectionPair:
    auth_a = kw.pop("auth_a", AUTH_CERT if creds_a else AUTH_PASSWORD)
    auth_b = kw.pop("auth_b", AUTH_CERT if creds_b else AUTH_PASSWORD)
    p = ConnectionPair(
        ident_a=identity(1, auth=auth_a),
        ident_b=identity(2, auth=auth_b),
        creds_a=creds_a,
        creds_b=creds_b,
        **kw,  # type: ignore[arg-type]
    )
    p.pump()
    return p


def test_two_certified_hosts_agree_on_keys_and_see_each_others_certificate() -> None:
    ca = MeshCa()
    p = pair(ca.creds(1), ca.creds(2))
    assert p.a.state is State.OPEN
    assert p.b.state is State.OPEN
    ra, rb = p.a.result, p.b.result
    assert ra is not None
    assert rb is not None
    assert ra.cert is not None
    assert ra.cert.nickname == "host2"
    assert rb.cert is not None
    assert rb.cert.nickname == "host1"
    assert ra.keys.control_send == rb.keys.control_recv
    assert ra.keys.data_send == rb.keys.data_recv
    assert ra.psk == b""  # no password was involved


def test_certificate_mode_keys_differ_per_connection() -> None:
    ca = MeshCa()
    one = pair(ca.creds(1), ca.creds(2))
    again = ConnectionPair(
        ident_a=identity(1, auth=AUTH_CERT, uid=5),
        ident_b=identity(2, auth=AUTH_CERT),
        creds_a=ca.creds(1),
        creds_b=ca.creds(2),
    )
    again.pump()
    assert one.a.result is not None
    assert again.a.result is not None
    assert one.a.result.keys.data_send != again.a.result.keys.data_send


def refused(p: ConnectionPair) -> tuple[str, str]:
    assert p.a.state is State.CLOSED
    assert p.b.state is State.CLOSED
    ra, rb = p.closed_reasons("a"), p.closed_reasons("b")
    assert ra
    assert rb
    return ra[0], rb[0]


def test_another_cas_certificate_is_refused_on_both_sides() -> None:
    ca, other = MeshCa(), MeshCa("rogue")
    a, b = refused(pair(other.creds(1, trust=[other.cert]), ca.creds(2)))
    assert "signed by another CA" in a
    assert "signed by another CA" in b


def test_the_responders_bad_certificate_is_refused_and_the_responder_hears_why() -> None:
    ca, other = MeshCa(), MeshCa("rogue")
    a, b = refused(pair(ca.creds(1), other.creds(2, trust=[other.cert])))
    assert "signed by another CA" in a
    assert "signed by another CA" in b  # told in a sealed CLOSE


def test_expired_and_not_yet_valid_certificates_are_refused_with_the_date() -> None:
    ca = MeshCa()
    a, b = refused(pair(ca.creds(1, not_after=10**6), ca.creds(2)))
    assert "expired at 1970-01-12" in a
    assert "expired" in b
    a, b = refused(pair(ca.creds(1), ca.creds(2, not_before=2 * 10**9)))
    assert "not valid yet" in a
    assert "not valid yet" in b


def test_clock_skew_within_five_minutes_is_tolerated() -> None:
    ca = MeshCa()
    wall = 1e9
    p = pair(ca.creds(1, wall=wall), ca.creds(2, not_before=int(wall) + 200, wall=wall))
    assert p.a.state is State.OPEN


def test_a_certificate_without_its_key_is_refused() -> None:
    ca = MeshCa()
    stolen, _ = ca.host(2)
    thief = dataclasses.replace(ca.creds(2), cert=stolen, seed=b"\x07" * 32)
    a, b = refused(pair(ca.creds(1), thief))
    assert "without its key" in a
    assert "without its key" in b


def test_a_certificate_for_another_name_is_refused() -> None:
    ca = MeshCa()
    h3, seed3 = ca.host(3)
    liar = dataclasses.replace(ca.creds(2), cert=h3, seed=seed3)  # HELLO says host2
    a, _b = refused(pair(ca.creds(1), liar))
    assert "calls itself 'host2'" in a
    assert "host3" in a


def test_a_revoked_certificate_is_refused() -> None:
    ca = MeshCa()
    from meshrouter.proto import cert as certmod

    creds_b = ca.creds(2)
    h1, _ = ca.host(1)
    creds_b.trust.add_revocation(certmod.revoke(ca.seed, [h1], 5))
    a, b = refused(pair(ca.creds(1), creds_b))
    assert "revoked" in a
    assert "revoked" in b


def test_during_a_migration_certificates_are_used_where_both_have_them() -> None:
    ca = MeshCa()
    p = pair(ca.creds(1), ca.creds(2), auth_a=BOTH, auth_b=BOTH)
    assert p.a.result is not None
    assert p.a.result.cert is not None
    p = pair(None, ca.creds(2), auth_b=BOTH)
    assert p.a.result is not None
    assert p.a.result.cert is None
    assert p.a.result.psk


def test_a_certificate_only_host_refuses_a_password_only_one_saying_why() -> None:
    ca = MeshCa()
    a, b = refused(pair(None, ca.creds(2)))
    assert "only hosts with a certificate" in a
    assert "only hosts with a certificate" in b
