from __future__ import annotations

import pytest

from meshrouter.base.errors import BadPacket, LocalProtocolError
from meshrouter.proto.crypto import PREFERENCE, Opener, Sealer, Suite, choose_suite, suites_mask

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
