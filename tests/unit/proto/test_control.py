from __future__ import annotations

import math

import pytest

from meshrouter.base.errors import LocalProtocolError
from meshrouter.proto.control import (
    ConnectionClosed,
    ControlConnection,
    MessageReceived,
    MessageType,
    State,
)
from meshrouter.testing.control import ConnectionPair, identity, psk, seeded_key


def test_messages_flow_encrypted_both_ways() -> None:
    p = ConnectionPair()
    p.pump()
    p.a.send_message(MessageType.GOSSIP, b"hello from a")
    wire = p.a.data_to_send()
    assert b"hello from a" not in wire
    p.b.receive_data(wire, 0.0)
    p.b.send_message(MessageType.GOSSIP, b"hi back")
    p.pump()
    got_b = [e for e in p.events["b"] if isinstance(e, MessageReceived)]
    got_a = [e for e in p.events["a"] if isinstance(e, MessageReceived)]
    assert got_b == [MessageReceived(MessageType.GOSSIP, b"hello from a")]
    assert got_a == [MessageReceived(MessageType.GOSSIP, b"hi back")]


def test_close_reason_reaches_peer() -> None:
    p = ConnectionPair()
    p.pump()
    p.a.close("operator said forget")
    p.pump()
    assert p.closed_reasons("b") == ["peer closed: operator said forget"]
    assert p.closed_reasons("a") == ["operator said forget"]


def test_heartbeats_and_timeout() -> None:
    p = ConnectionPair()
    p.pump()
    assert p.a.get_timer() == pytest.approx(1.0)
    # Heartbeats keep both alive for a long time.
    for t in range(1, 30):
        p.now = float(t)
        p.a.handle_timer(p.now)
        p.b.handle_timer(p.now)
        p.pump()
    assert p.a.state is State.OPEN
    assert p.a.messages_sent >= 28
    # b goes silent: a times out with a clear reason.
    now = 30.0
    while p.a.state is State.OPEN:
        now = p.a.get_timer()
        p.a.handle_timer(now)
        p.a.data_to_send()
    assert now == pytest.approx(29.0 + 6.0)
    ev = [e for e in iter(p.a.next_event, None) if isinstance(e, ConnectionClosed)]
    assert "no heartbeat" in ev[0].reason
    assert p.a.get_timer() == math.inf


def test_a_peer_heard_over_udp_gets_fewer_heartbeats_and_is_not_timed_out() -> None:
    p = ConnectionPair()
    p.pump()
    # b stops sending control messages (a starved loop, say) but its UDP is
    # heard: a keeps the connection, and itself sends heartbeats every 5 s.
    sent = p.a.messages_sent
    for t in range(1, 21):
        p.now = float(t)
        p.a.peer_alive(p.now - 0.3, 5.0, p.now)
        p.a.handle_timer(p.now)
        p.a.data_to_send()
    assert p.a.state is State.OPEN
    assert 3 <= p.a.messages_sent - sent <= 5  # not 20
    # UDP stops too: 6 s after it was last heard, the connection goes.
    p.a.peer_not_heard(1.0, p.now)
    now = p.now
    while p.a.state is State.OPEN:
        now = p.a.get_timer()
        p.a.handle_timer(now)
        p.a.data_to_send()
    assert now == pytest.approx(20.0 - 0.3 + 6.0)


def test_udp_alone_keeps_a_silent_control_connection_only_so_long() -> None:
    p = ConnectionPair()
    p.pump()
    now = 0.0
    while p.a.state is State.OPEN and now < 100:
        now += 0.5
        p.a.peer_alive(now, 5.0, now)
        if now >= p.a.get_timer():
            p.a.handle_timer(now)
        p.a.data_to_send()
    assert p.a.state is State.CLOSED  # the TCP path is dead while UDP lives: 30 s
    assert now == pytest.approx(30.0)
    ev = [e for e in iter(p.a.next_event, None) if isinstance(e, ConnectionClosed)]
    assert "no heartbeat from peer for 30s" in ev[-1].reason


def test_handshake_timeout() -> None:
    c = ControlConnection(
        initiator=True,
        identity=identity(1),
        psk=psk(b"secret"),
        ephemeral_private=seeded_key("x"),
        recv_index=1,
        now=100.0,
    )
    assert c.get_timer() == 110.0
    c.handle_timer(110.0)
    assert c.state is State.CLOSED
    assert c.close_reason == "handshake timed out"


def test_send_before_open_is_local_error() -> None:
    p = ConnectionPair()
    with pytest.raises(LocalProtocolError):
        p.a.send_message(MessageType.GOSSIP, b"x")


def test_tampered_control_frame_closes_with_protocol_error() -> None:
    p = ConnectionPair()
    p.pump()
    p.a.send_message(MessageType.GOSSIP, b"payload")
    wire = bytearray(p.a.data_to_send())
    wire[-1] ^= 1
    p.b.receive_data(bytes(wire), 0.0)
    assert p.b.state is State.CLOSED
    assert "authentication failed" in (p.b.close_reason or "")


def test_oversized_frame_refused_before_buffering() -> None:
    p = ConnectionPair()
    p.b.receive_data(b"\xff\xff\xff\xff", 0.0)
    assert p.b.state is State.CLOSED
    assert "exceeds limit" in (p.b.close_reason or "")
