from __future__ import annotations


def test_targets_backoff_jitter_cap_and_discovery() -> None:
    from meshrouter.mesh.targets import MAX_DELAY, Targets

    t = Targets(6783)
    t.add("198.18.0.1", 0.0)
    (due,) = t.due(0.0)
    assert due.address == "198.18.0.1:6783"
    assert t.due(0.0) == []  # connecting: not due again
    now, delays = 0.0, []
    for _ in range(12):
        t.failed(due.address, "refused", now, jitter=1.0)
        delays.append(due.next_try - now)
        now = t.next_deadline()
        assert t.due(now) == [due]
    assert delays[0] == 0.5
    assert delays[1] == 0.75
    assert max(delays) == MAX_DELAY
    t.failed(due.address, "refused", now, jitter=0.5)
    assert due.next_try - now == MAX_DELAY * 0.5
    assert due.last_error == "refused"
    t.connected(due.address, b"peer")
    assert due.state == "connected"
    # Discovered targets come and go with the topology; operator ones stay.
    t.sync_discovered({"198.18.0.2:6783": now}, now)
    assert {x.address for x in t if x.discovered} == {"198.18.0.2:6783"}
    t.sync_discovered({}, now)
    assert [x.address for x in t] == ["198.18.0.1:6783"]
    t.sync_discovered({"198.18.0.3:6783": now}, now)
    t.add("198.18.0.3", now)  # the operator adopts it
    t.sync_discovered({}, now)
    assert sorted(x.address for x in t) == ["198.18.0.1:6783", "198.18.0.3:6783"]


def test_split_address_errors() -> None:
    import pytest

    from meshrouter.base.inputs import split_address

    assert split_address("[fd00::1]:7000", 6783) == ("fd00::1", 7000)
    assert split_address("host", 6783) == ("host", 6783)
    for bad in ("", "h:0", "h:99999", "h:x", "[fd00::1", "a b"):
        with pytest.raises(ValueError, match=r"peer address|empty"):
            split_address(bad, 6783)
