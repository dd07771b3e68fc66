"""DNS records: the merge is a CRDT, the origin corrects stale entries, the parser
takes anything."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrouter.base.errors import BadPacket
from meshrouter.dns.records import (
    TOMBSTONE_LIFETIME,
    Entry,
    Records,
    decode_untrusted,
    encode,
    encode_chunks,
    normalise_name,
)

P1, P2, P3 = (bytes([2, 0, 0, 0, 0, i]) for i in (1, 2, 3))
WEB = "web.mesh.local."

entries = st.builds(
    Entry,
    origin=st.sampled_from([P1, P2, P3]),
    container=st.sampled_from(["c1", "c2"]),
    name=st.sampled_from([WEB, "db.mesh.local."]),
    addr=st.integers(0x0A200001, 0x0A200004),
    version=st.integers(1, 5),
    tombstone=st.booleans(),
)
batches = st.lists(entries, max_size=12)


def view(*batch_lists: list[Entry]) -> dict[tuple[bytes, str, str, int], Entry]:
    """A bystander's state after merging the batches in order."""
    r = Records(bytes(6))
    for b in batch_lists:
        r.merge(b, 0.0)
    return r.entries


@given(batches, batches)
def test_merge_commutes(a: list[Entry], b: list[Entry]) -> None:
    assert view(a, b) == view(b, a)


@given(batches, batches, batches)
def test_merge_associates(a: list[Entry], b: list[Entry], c: list[Entry]) -> None:
    assert view(a, b, c) == view(a, b + c) == view(c, a, b)


@given(batches)
def test_merge_is_idempotent(a: list[Entry]) -> None:
    assert view(a) == view(a, a)


@given(batches)
@settings(max_examples=50)
def test_what_merge_reports_changed_brings_a_neighbour_level(a: list[Entry]) -> None:
    """Passing on only what changed is enough for the next peer to converge."""
    hub, leaf = Records(bytes(6)), Records(bytes([9] * 6))
    changed, _ = hub.merge(a, 0.0)
    leaf.merge(changed, 0.0)
    assert leaf.entries == hub.entries


def test_a_tombstone_removes_a_name_everywhere() -> None:
    a, b = Records(P1), Records(P2)
    e = a.add("c1", WEB, 0x0A200001, 0.0)
    assert e is not None
    b.merge([e], 0.0)
    assert [x.address for x in b.lookup(WEB)] == ["10.32.0.1"]
    tombs = a.remove("c1", 1.0)
    b.merge(tombs, 1.0)
    assert b.lookup(WEB) == []
    assert a.lookup(WEB) == []
    b.merge([e], 2.0)  # a late copy of the live entry changes nothing
    assert b.lookup(WEB) == []


def test_a_restarted_origin_retracts_what_it_no_longer_holds() -> None:
    old, other = Records(P1), Records(P2)
    e = old.add("c1", WEB, 0x0A200001, 0.0)
    assert e is not None
    other.merge([e], 0.0)
    new = Records(P1)  # restarted with nothing saved
    changed, fixes = new.merge(other.all(), 5.0)
    assert changed == []
    assert [(f.version, f.tombstone) for f in fixes] == [(2, True)]
    other.merge(fixes, 5.0)
    assert other.lookup(WEB) == []


def test_a_restarted_origin_keeps_what_it_holds_above_an_old_life() -> None:
    old, other = Records(P1), Records(P2)
    other.merge([old.add("c1", WEB, 1, 0.0) or Entry(P1, "", "", 0, 1)], 0.0)
    other.merge(old.remove("c1", 1.0), 1.0)  # version 2, a tombstone
    new = Records(P1)
    new.add("c1", WEB, 1, 2.0)  # attached again after the restart: version 1
    _, fixes = new.merge(other.all(), 3.0)
    assert [(f.version, f.tombstone) for f in fixes] == [(3, False)]
    other.merge(fixes, 3.0)
    assert [x.addr for x in other.lookup(WEB)] == [1]


def test_tombstones_expire_and_a_gone_peer_is_dropped() -> None:
    a, b = Records(P1), Records(P2)
    b.merge([a.add("c1", WEB, 1, 0.0), a.add("c2", WEB, 2, 0.0)], 0.0)  # type: ignore[list-item]
    b.merge(a.remove("c1", 1.0), 1.0)
    assert b.expire(1.0 + TOMBSTONE_LIFETIME - 1) == 0
    assert b.expire(1.0 + TOMBSTONE_LIFETIME) == 1
    assert b.drop_origin(P1) == 1
    assert b.all() == []


def test_lookup_gives_each_address_once_and_reverse_gives_names() -> None:
    r = Records(P1)
    r.add("c1", WEB, 1, 0.0)
    r.add("c2", WEB, 1, 0.0)
    r.add("c2", "www.mesh.local.", 1, 0.0)
    assert [e.addr for e in r.lookup(WEB)] == [1]
    assert r.reverse(1) == ["web.mesh.local.", "www.mesh.local."]


@given(batches)
def test_encoding_round_trips(a: list[Entry]) -> None:
    assert decode_untrusted(encode(a)) == a


def test_chunks_stay_small() -> None:
    many = [Entry(P1, "c", WEB, i, 1) for i in range(2500)]
    chunks = list(encode_chunks(many))
    assert len(chunks) == 3
    assert [e for c in chunks for e in decode_untrusted(c)] == many


@given(st.binary(max_size=200))
def test_garbage_raises_only_bad_packet(data: bytes) -> None:
    with contextlib.suppress(BadPacket):
        decode_untrusted(data)


@given(batches, st.integers(0, 400), st.binary(min_size=1, max_size=3))
def test_corrupted_encodings_raise_only_bad_packet(a: list[Entry], at: int, junk: bytes) -> None:
    data = bytearray(encode(a))
    at = at % (len(data) + 1)
    data[at : at + len(junk)] = junk
    with contextlib.suppress(BadPacket):
        decode_untrusted(bytes(data))


@pytest.mark.parametrize(
    ("given", "want"),
    [("Web01", "web01."), ("web01.Mesh.Local.", "web01.mesh.local."), ("a_b-c.x", "a_b-c.x.")],
)
def test_names_are_normalised(given: str, want: str) -> None:
    assert normalise_name(given) == want


@pytest.mark.parametrize("bad", ["", ".", "a..b", "a b", "é.local", "x" * 64 + ".local"])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid DNS name"):
        normalise_name(bad)
