"""Containers' IPv6 addresses as images of their IPv4 ones (v6map)."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshrouter.base.v6map import Range6, Range6Error, parse_address6, parse_range6

R = parse_range6("fd32::/64", "10.32.0.0/12")


def test_the_offset_in_the_range_is_kept_and_the_prefix_shifts() -> None:
    assert R is not None
    assert str(R.image(ipaddress.IPv4Interface("10.32.0.5/12"))) == "fd32::5/64"
    assert str(R.image(ipaddress.IPv4Interface("10.40.1.7/24"))) == "fd32::8:107/76"
    assert R.origin(ipaddress.IPv6Address("fd32::5")) == ipaddress.IPv4Address("10.32.0.5")


def test_addresses_outside_either_range_have_no_image() -> None:
    assert R is not None
    assert R.image(ipaddress.IPv4Interface("192.168.1.5/24")) is None
    assert R.image(ipaddress.IPv4Interface("10.32.0.5/8")) is None  # wider than the range
    assert R.origin(ipaddress.IPv6Address("fd33::5")) is None
    assert R.origin(ipaddress.IPv6Address("fd32::1:0:0")) is None  # past 2**20 addresses


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("fd32::/120", "/108 or shorter"),
        ("10.0.0.0/8", "is IPv4"),
        ("fd32::/64x", "not an IPv6 network"),
        ("ff02::/64", "not unicast"),
        ("fe80::/64", "not unicast"),
    ],
)
def test_bad_ranges_are_refused_with_what_to_do(text: str, words: str) -> None:
    with pytest.raises(Range6Error, match=words):
        parse_range6(text, "10.32.0.0/12")


def test_off_is_none() -> None:
    assert parse_range6("", "10.32.0.0/12") is None
    assert parse_range6("off", "10.32.0.0/12") is None


@pytest.mark.parametrize("text", ["fe80::1/64", "::1", "ff02::1", "::", "fd32::5/129", "x::"])
def test_container_addresses_must_be_unicast(text: str) -> None:
    with pytest.raises(Range6Error):
        parse_address6(text)


@given(
    prefix4=st.integers(8, 30),
    prefix6=st.integers(16, 120),
    offset=st.integers(0, 2**24),
    extra=st.integers(0, 8),
    text=st.text(max_size=40),
)
def test_image_and_origin_are_inverse_and_stay_in_range(
    prefix4: int, prefix6: int, offset: int, extra: int, text: str
) -> None:
    v4 = ipaddress.IPv4Network(f"10.0.0.0/{prefix4}", strict=False)
    try:
        r = parse_range6(f"fd00::/{prefix6}", str(v4))
    except Range6Error:
        assert 128 - prefix6 < 32 - prefix4
        return
    assert isinstance(r, Range6)
    addr = ipaddress.IPv4Address(int(v4.network_address) + offset % v4.num_addresses)
    plen = min(32, prefix4 + extra)
    img = r.image(ipaddress.IPv4Interface(f"{addr}/{plen}"))
    assert img is not None
    assert img.ip in r.v6
    assert img.network.prefixlen == plen + (r.v6.prefixlen - prefix4)
    assert r.origin(img.ip) == addr
    # operator text never raises anything but Range6Error
    for parse in (lambda: parse_range6(text, str(v4)), lambda: parse_address6(text)):
        with contextlib.suppress(Range6Error):
            parse()
