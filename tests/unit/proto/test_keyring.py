"""The mesh's keys across a rotation (sans IO), and the handshake with more than
one key: what an initiator uses, what a responder accepts, what it refuses."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshrouter.base.errors import BadPacket
from meshrouter.proto.control import HandshakeComplete, State
from meshrouter.proto.keyring import KeyRing, decode_rotate_untrusted, encode_rotate
from meshrouter.testing.control import ConnectionPair, identity, psk

OLD, NEW = psk(b"secret"), psk(b"the new secret")
PEER = identity(2).name


def test_a_rotation_keeps_the_old_key_for_the_window_then_retires_it() -> None:
    ring = KeyRing(current=OLD)
    assert ring.rotate(NEW, now=10.0, window=60.0) == 1
    assert ring.accepted() == [NEW, OLD]
    assert ring.for_peer(PEER) == OLD  # not known to hold the new one
    ring.receive(PEER, 1, NEW, 60.0, now=11.0)  # it says it does
    assert ring.for_peer(PEER) == NEW
    assert not ring.tick(69.0)
    assert ring.tick(70.0)
    assert ring.accepted() == [NEW]
    assert ring.refused() == [OLD]
    assert ring.for_peer(b"\x02\x00\x00\x00\x00\x09") == NEW
    with pytest.raises(ValueError, match="current or a recent"):
        ring.rotate(OLD, now=80.0)


def test_keys_are_adopted_only_forward_and_never_back() -> None:
    ring = KeyRing(current=OLD)
    assert ring.receive(PEER, 1, NEW, 60.0, now=0.0)
    assert (ring.epoch, ring.current, ring.previous) == (1, NEW, OLD)
    assert not ring.receive(PEER, 1, NEW, 60.0, now=1.0)  # again: nothing new
    ring.tick(100.0)
    assert not ring.receive(PEER, 7, OLD, 60.0, now=101.0)  # a retired key: never again
    assert ring.current == NEW
    # A peer given the new password file by hand learns the number of its key.
    by_hand = KeyRing(current=NEW)
    assert not by_hand.receive(PEER, 3, NEW, 60.0, now=0.0)
    assert by_hand.epoch == 3


def test_the_ring_survives_a_restart_and_a_new_password_file_rotates() -> None:
    ring = KeyRing(current=OLD)
    ring.rotate(NEW, now=100.0, window=60.0)
    doc = ring.to_json(now=130.0, wall=5000.0)  # 30 s of the window left
    back = KeyRing.from_json(doc, launch_key=OLD, now=7.0, wall=5010.0)
    assert (back.epoch, back.current, back.previous) == (1, NEW, OLD)
    assert back.window_ends == pytest.approx(27.0)
    assert KeyRing.from_json({"junk": 1}, launch_key=OLD, now=0.0, wall=0.0).current == OLD
    third = psk(b"a third secret")
    moved = KeyRing.from_json(doc, launch_key=third, now=0.0, wall=5000.0)
    assert (moved.epoch, moved.current) == (2, third)


@given(st.binary(max_size=80))
def test_rotate_messages_are_parsed_or_refused_with_bad_packet(data: bytes) -> None:
    with contextlib.suppress(BadPacket):
        decode_rotate_untrusted(data)


def test_rotate_message_round_trip() -> None:
    assert decode_rotate_untrusted(encode_rotate(3, NEW, 600.0)) == (3, NEW, 600.0)
    with pytest.raises(BadPacket):
        decode_rotate_untrusted(encode_rotate(0, NEW, 600.0))


def test_a_responder_in_the_window_accepts_either_key() -> None:
    ring = KeyRing(current=OLD)
    ring.rotate(NEW, now=0.0, window=60.0)
    for password in (b"secret", b"the new secret"):
        p = ConnectionPair(password_a=password, keys_b=ring)
        p.pump()
        assert p.a.state is State.OPEN
        assert p.b.state is State.OPEN
        assert p.b.result is not None
        assert p.b.result.psk == psk(password)
        assert p.a.result is not None
        assert p.a.result.keys.data_send == p.b.result.keys.data_recv
        assert isinstance(p.events["b"][0], HandshakeComplete)


def test_a_retired_key_is_refused_with_a_reason_that_names_the_rotation() -> None:
    ring = KeyRing(current=OLD)
    ring.rotate(NEW, now=0.0, window=60.0)
    ring.tick(60.0)
    p = ConnectionPair(password_a=b"secret", keys_b=ring)
    p.pump()
    assert p.a.state is State.CLOSED
    assert p.b.state is State.CLOSED
    (told,) = p.closed_reasons("a")
    assert "mesh password was rotated" in told
    assert "new password file" in told
    # A password that was never the mesh's is only "wrong".
    q = ConnectionPair(password_a=b"never", keys_b=ring)
    q.pump()
    (told,) = q.closed_reasons("a")
    assert "wrong password" in told
    assert "rotated" not in told
