from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshrouter.proto.replay import ReplayWindow

KEY = bytes(range(32))


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
