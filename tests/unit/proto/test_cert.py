"""Certificates and revocations: the format round-trips, the parsers raise only
BadPacket, and a changed byte never verifies."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrouter.base.errors import BadPacket
from meshrouter.proto import cert
from meshrouter.testing.control import MeshCa

CA = MeshCa()
HOST, HOST_SEED = CA.host(1)
RANGED = cert.issue(
    CA.seed,
    name=cert.peer_name_for("web-1"),
    nickname="web-1",
    public_key=cert.public_key_of(HOST_SEED),
    not_before=1_000,
    not_after=2_000_000_000,
    ranges=["10.32.0.0/16", "fd32::/64"],
    groups=["web", "prod"],
)
REVOCATION = cert.revoke(CA.seed, [HOST, RANGED], 1_700_000_000)


def test_a_certificate_round_trips_and_verifies() -> None:
    back = cert.decode_cert_untrusted(RANGED.raw)
    assert back == RANGED
    assert back.ranges == ("10.32.0.0/16", "fd32::/64")
    assert back.groups == ("web", "prod")
    cert.Trust.of([CA.cert]).verify(back, 1.8e9)
    armored = cert.armor(cert.PEM_CERT, RANGED.raw)
    assert cert.dearmor("junk\n" + armored, cert.PEM_CERT) == [RANGED.raw]


def test_peer_names_from_host_names_are_unicast_and_local() -> None:
    name = cert.peer_name_for("web-1")
    assert len(name) == 6
    assert name[0] & 0x02
    assert not name[0] & 0x01
    assert name != cert.peer_name_for("web-2")


def test_a_revocation_round_trips_and_its_signature_is_checked() -> None:
    back = cert.decode_revocation_untrusted(REVOCATION.raw)
    trust = cert.Trust.of([CA.cert])
    trust.check_revocation(back)
    assert trust.add_revocation(back) == [
        (HOST.fingerprint, HOST.name),
        (RANGED.fingerprint, RANGED.name),
    ]
    assert trust.add_revocation(back) == []  # nothing new the second time
    with pytest.raises(BadPacket, match="does not trust"):
        cert.Trust.of([MeshCa("rogue").cert]).check_revocation(back)


@given(st.binary(max_size=400))
def test_cert_parser_raises_only_bad_packet(data: bytes) -> None:
    with contextlib.suppress(BadPacket):
        cert.decode_cert_untrusted(data)


@given(st.binary(max_size=400))
def test_revocation_parser_raises_only_bad_packet(data: bytes) -> None:
    with contextlib.suppress(BadPacket):
        cert.decode_revocation_untrusted(data)


@given(st.text(max_size=300))
def test_dearmor_raises_only_bad_packet(text: str) -> None:
    with contextlib.suppress(BadPacket):
        cert.dearmor(text, cert.PEM_CERT)


@settings(max_examples=300)
@given(st.integers(0, len(RANGED.raw) - 1), st.integers(1, 255))
def test_a_changed_byte_of_a_certificate_never_verifies(pos: int, flip: int) -> None:
    raw = bytearray(RANGED.raw)
    raw[pos] ^= flip
    try:
        changed = cert.decode_cert_untrusted(bytes(raw))
    except BadPacket:
        return
    with pytest.raises(cert.CertRefused):
        cert.Trust.of([CA.cert]).verify(changed, 1.8e9)


@settings(max_examples=300)
@given(st.integers(0, len(REVOCATION.raw) - 1), st.integers(1, 255))
def test_a_changed_byte_of_a_revocation_never_passes(pos: int, flip: int) -> None:
    raw = bytearray(REVOCATION.raw)
    raw[pos] ^= flip
    with pytest.raises(BadPacket):
        cert.Trust.of([CA.cert]).check_revocation(cert.decode_revocation_untrusted(bytes(raw)))


@given(st.binary(min_size=1, max_size=600))
def test_garbage_confirm_in_certificate_mode_only_closes_the_connection(junk: bytes) -> None:
    from meshrouter.proto.control import State
    from meshrouter.proto.framing import encode_frame
    from meshrouter.proto.handshake import AUTH_CERT
    from meshrouter.testing.control import ConnectionPair, identity

    p = ConnectionPair(
        ident_a=identity(1, auth=AUTH_CERT),
        ident_b=identity(2, auth=AUTH_CERT),
        creds_a=CA.creds(1),
        creds_b=CA.creds(2),
    )
    p.b.receive_data(p.a.data_to_send(), 0.0)  # b has a's HELLO
    p.b.receive_data(encode_frame(b"\x02" + junk), 0.0)  # then garbage for its CONFIRM
    assert p.b.state is State.CLOSED
