from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from meshrouter.base.errors import BadPacket
from meshrouter.proto.control import (
    ControlConnection,
    HandshakeComplete,
    State,
)
from meshrouter.proto.crypto import Suite, suites_mask
from meshrouter.proto.handshake import (
    Hello,
    decode_hello_untrusted,
    encode_hello,
)
from meshrouter.testing.control import ConnectionPair, identity, psk, seeded_key


def test_handshake_agrees_on_keys_and_identities() -> None:
    p = ConnectionPair()
    p.pump()
    assert p.a.state is State.OPEN
    assert p.b.state is State.OPEN
    ra, rb = p.a.result, p.b.result
    assert ra is not None
    assert rb is not None
    assert ra.peer.nickname == "host2"
    assert rb.peer.nickname == "host1"
    assert ra.peer_recv_index == 22
    assert rb.peer_recv_index == 11
    assert ra.keys.suite is Suite.AEGIS128L
    # Directions are crossed, planes are disjoint.
    assert ra.keys.control_send == rb.keys.control_recv
    assert ra.keys.data_send == rb.keys.data_recv
    assert ra.keys.data_send == ra.keys.data_send
    assert (
        len({ra.keys.control_send, ra.keys.control_recv, ra.keys.data_send, ra.keys.data_recv}) == 4
    )
    assert isinstance(p.events["a"][0], HandshakeComplete)


def test_wrong_password_refused_on_both_sides_and_no_session() -> None:
    p = ConnectionPair(password_b=b"not the secret")
    p.pump()
    assert p.a.state is State.CLOSED
    assert p.b.state is State.CLOSED
    for side in "ab":
        (reason,) = p.closed_reasons(side)
        assert "wrong password" in reason
    assert p.a.result is None
    assert p.b.result is None
    assert not any(isinstance(e, HandshakeComplete) for e in p.events["a"] + p.events["b"])


def test_password_never_on_the_wire() -> None:
    p = ConnectionPair(password_a=b"hunter2-hunter2", password_b=b"hunter2-hunter2")
    wire = p.a.data_to_send() + p.b.data_to_send()
    assert b"hunter2" not in wire
    assert psk(b"hunter2-hunter2") not in wire


def test_incompatible_version_refused_with_reason_on_both_sides() -> None:
    p = ConnectionPair(ident_b=identity(2, version_min=5, version_max=7))
    p.pump()
    (ra,) = p.closed_reasons("a")
    (rb,) = p.closed_reasons("b")
    assert "incompatible protocol version" in ra
    assert "incompatible protocol version" in rb
    assert "5..7" in ra


def test_overlapping_versions_pick_highest_common() -> None:
    p = ConnectionPair(
        ident_a=identity(1, version_min=1, version_max=3),
        ident_b=identity(2, version_min=2, version_max=5),
    )
    p.pump()
    assert p.a.result is not None
    assert p.a.result.keys.version == 3


def test_suite_fallback_and_no_common_suite() -> None:
    only_x = suites_mask((Suite.XCHACHA20POLY1305,))
    p = ConnectionPair(ident_b=identity(2, suites=only_x))
    p.pump()
    assert p.a.result is not None
    assert p.a.result.keys.suite is Suite.XCHACHA20POLY1305
    q = ConnectionPair(
        ident_a=identity(1, suites=suites_mask((Suite.AEGIS128L,))),
        ident_b=identity(2, suites=only_x),
    )
    q.pump()
    assert "no cipher suite in common" in q.closed_reasons("a")[0]


def test_different_ip_range_refused_on_both_sides() -> None:
    p = ConnectionPair(
        ident_a=identity(1, ipalloc_range="10.32.0.0/12"),
        ident_b=identity(2, ipalloc_range="10.40.0.0/16"),
    )
    p.pump()
    for side in "ab":
        (reason,) = p.closed_reasons(side)
        assert "different IP allocation range" in reason
        assert "10.40.0.0/16" in reason
    same = ConnectionPair(
        ident_a=identity(1, ipalloc_range="10.32.0.0/12"),
        ident_b=identity(2, ipalloc_range="10.32.0.0/12"),
    )
    same.pump()
    assert same.a.result is not None
    assert same.a.result.peer.ipalloc_range == "10.32.0.0/12"


def test_connection_to_self_refused() -> None:
    p = ConnectionPair(ident_b=identity(1))
    p.pump()
    assert "connection to self" in p.closed_reasons("a")[0]


@given(st.binary(max_size=200))
def test_decode_hello_raises_only_bad_packet(data: bytes) -> None:
    with contextlib.suppress(BadPacket):
        decode_hello_untrusted(data)


@given(st.binary(max_size=200), st.integers(0, 150))
def test_mutated_hello_raises_only_bad_packet(noise: bytes, pos: int) -> None:
    good = bytearray(encode_hello(Hello(identity(3), 7, bytes(32))))
    good[pos % len(good) :] = noise
    with contextlib.suppress(BadPacket):
        decode_hello_untrusted(bytes(good))


@given(st.lists(st.binary(max_size=120), max_size=8))
def test_connection_survives_garbage(chunks: list[bytes]) -> None:
    """Garbage closes the connection with a reason; nothing ever raises."""
    c = ControlConnection(
        initiator=False,
        identity=identity(2),
        psk=psk(b"secret"),
        ephemeral_private=seeded_key("g"),
        recv_index=1,
        now=0.0,
    )
    for chunk in chunks:
        c.receive_data(chunk, 0.0)
    if c.state is State.CLOSED:
        assert c.close_reason
