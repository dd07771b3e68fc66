from __future__ import annotations

from meshrouter.dataplane.mactable import LOCAL, MacTable, is_multicast


def test_mac_table_learn_lookup_expire() -> None:
    t = MacTable(max_age=10)
    m1, m2 = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
    v = t.version
    assert t.learn(m1, LOCAL, 0.0)
    assert t.version > v  # a new MAC
    v = t.version
    assert not t.learn(m1, LOCAL, 1.0)
    assert t.version == v  # only refreshed
    assert t.learn(m2, b"peerB", 1.0)
    assert t.lookup(m1, 5.0) == LOCAL
    assert t.lookup(m2, 5.0) == b"peerB"
    v = t.version
    assert t.learn(m2, LOCAL, 6.0)  # moved
    assert t.version > v
    assert t.lookup(m2, 6.0) == LOCAL
    v = t.version
    assert t.lookup(m1, 20.0) is None  # expired on lookup
    assert t.version > v
    assert t.lookup(b"\x02" * 6, 0.0) is None
    t.learn(m1, b"x", 0.0)
    v = t.version
    assert t.expire(5.0) == 0
    assert t.version == v
    assert t.expire(100.0) == 2
    assert t.version > v
    assert len(t) == 0
    assert is_multicast(b"\xff" * 6)
    assert is_multicast(b"\x01\x00\x5e\x00\x00\x01")
    assert not is_multicast(m1)
