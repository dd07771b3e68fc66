from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshrouter.base.errors import BadPacket
from meshrouter.proto.wire import FramePacker, iter_frames_untrusted, parse_header_untrusted


def test_packer_keeps_route_prefix() -> None:
    p = FramePacker(100, prefix=b"RRRR")
    p.add(b"abc")
    assert len(p) == 7
    assert p.take() == b"RRRR\x00\x00\x00\x03abc"
    assert len(p) == 0
    p.add(b"z")
    assert p.take() == b"RRRR\x00\x00\x00\x01z"


def test_route_header_and_frames_from_offset() -> None:
    from meshrouter.proto.wire import ROUTE, parse_route_header_untrusted, parse_route_untrusted

    plain = ROUTE.pack(b"A" * 6, b"B" * 6, 7) + b"\x00\x00\x00\x02hi"
    assert parse_route_untrusted(plain) == (b"A" * 6, b"B" * 6, 7, 2)
    assert [bytes(f) for f in iter_frames_untrusted(plain, ROUTE.size)] == [b"hi"]
    with pytest.raises(BadPacket):
        parse_route_untrusted(b"short")
    assert parse_route_header_untrusted(plain[:13]) == (b"A" * 6, b"B" * 6, 7)
    with pytest.raises(BadPacket):
        parse_route_header_untrusted(plain[:12])


def test_packer_limit() -> None:
    p = FramePacker(100)
    assert p.fits(96)
    assert not p.fits(97)
    p.add(b"x" * 50)
    assert not p.fits(50)
    assert p.frames == 1
    assert len(p.take()) == 54
    assert len(p) == 0


@given(st.binary(max_size=64))
def test_header_parser_raises_only_bad_packet(data: bytes) -> None:
    with contextlib.suppress(BadPacket):
        parse_header_untrusted(data)


@given(st.binary(max_size=300))
def test_frame_iterator_raises_only_bad_packet(data: bytes) -> None:
    try:
        for f in iter_frames_untrusted(data):
            assert len(f) > 0
    except BadPacket:
        pass
