from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshrouter.crypto import PREFERENCE, Opener, Sealer, Suite, choose_suite, suites_mask
from meshrouter.errors import BadPacket, LocalProtocolError
from meshrouter.replay import ReplayWindow

KEY = bytes(range(32))


@pytest.mark.parametrize("suite", list(Suite))
def test_seal_open_roundtrip_and_tamper(suite: Suite) -> None:
    s, o = Sealer(suite, KEY), Opener(suite, KEY)
    n = s.next_counter()
    ct = s.seal(n, b"ad", b"frame")
    assert o.open_untrusted(n, b"ad", ct) == b"frame"
    with pytest.raises(BadPacket):
        o.open_untrusted(n, b"AD", ct)
    with pytest.raises(BadPacket):
        o.open_untrusted(n + 1, b"ad", ct)
    with pytest.raises(BadPacket):
        o.open_untrusted(n, b"ad", ct[:-1] + bytes([ct[-1] ^ 1]))
    with pytest.raises(BadPacket):
        o.open_untrusted(n, b"ad", b"short")


def test_counters_never_repeat_and_exhaust() -> None:
    s = Sealer(Suite.AEGIS128L, KEY)
    assert [s.next_counter() for _ in range(5)] == [0, 1, 2, 3, 4]
    s.counter = 1 << 60
    with pytest.raises(LocalProtocolError, match="rekey"):
        s.next_counter()


def test_suite_choice_follows_preference() -> None:
    assert choose_suite(suites_mask(), suites_mask()) is PREFERENCE[0]
    assert (
        choose_suite(suites_mask((Suite.XCHACHA20POLY1305,)), suites_mask())
        is Suite.XCHACHA20POLY1305
    )
    assert choose_suite(0, suites_mask()) is None


def test_replay_window_basics() -> None:
    w = ReplayWindow(size=64)
    assert w.accept(0)
    assert not w.accept(0)
    assert w.accept(5)
    assert w.accept(3)
    assert not w.accept(3)
    assert w.accept(100)
    assert not w.accept(36)  # 64 behind the top: too old
    assert w.accept(37)
    assert w.accept(1000)  # jump past the window resets the bitmap
    assert not w.would_accept(1000)
    assert w.would_accept(999)


@given(st.lists(st.integers(0, 300), max_size=200))
def test_replay_window_matches_reference(counters: list[int]) -> None:
    size = 32
    w = ReplayWindow(size=size)
    seen: set[int] = set()
    top = -1
    for c in counters:
        expect = c not in seen and c > top - size
        assert w.accept(c) == expect
        if expect:
            seen.add(c)
            top = max(top, c)
