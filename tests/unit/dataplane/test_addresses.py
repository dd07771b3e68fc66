"""Datagram senders of either family, as recvmsg gives them, and as the
dual-stack socket wants them back."""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys

from hypothesis import given
from hypothesis import strategies as st

from meshrouter.dataplane.libc import sockaddr_address
from meshrouter.dataplane.udp import UdpSocket, wire_address

FAMILY = "<H" if sys.byteorder == "little" else ">H"


def sockaddr_in(host: str, port: int) -> bytes:
    raw = struct.pack(FAMILY, socket.AF_INET) + struct.pack("!H", port)
    return (raw + socket.inet_aton(host) + bytes(8)).ljust(28, b"\x00")


def sockaddr_in6(host: str, port: int) -> bytes:
    raw = struct.pack(FAMILY, socket.AF_INET6) + struct.pack("!HI", port, 0)
    return raw + socket.inet_pton(socket.AF_INET6, host) + bytes(4)


ports = st.integers(0, 65535)


@given(st.ip_addresses(v=4), ports)
def test_ipv4_senders_read_the_same_from_either_family_of_socket(
    addr: ipaddress.IPv4Address, port: int
) -> None:
    assert sockaddr_address(sockaddr_in(str(addr), port)) == (str(addr), port)
    mapped = f"::ffff:{addr}"  # what a dual-stack socket reads
    assert sockaddr_address(sockaddr_in6(mapped, port)) == (str(addr), port)


@given(st.ip_addresses(v=6), ports)
def test_ipv6_senders_read_in_their_short_form(addr: ipaddress.IPv6Address, port: int) -> None:
    got = sockaddr_address(sockaddr_in6(str(addr), port))
    if addr.ipv4_mapped is not None:
        assert got == (str(addr.ipv4_mapped), port)
    else:
        assert got == (str(addr), port)


def test_a_dual_stack_socket_takes_ipv4_peers_mapped() -> None:
    assert wire_address(socket.AF_INET6, ("10.0.0.1", 6783)) == ("::ffff:10.0.0.1", 6783)
    assert wire_address(socket.AF_INET6, ("2001:db8::1", 6783)) == ("2001:db8::1", 6783)
    assert wire_address(socket.AF_INET, ("10.0.0.1", 6783)) == ("10.0.0.1", 6783)


def test_listen_addresses_choose_the_socket_family() -> None:
    every = UdpSocket("::", 0, gso=False, gro=False)
    v4 = UdpSocket("0.0.0.0", 0, gso=False, gro=False)
    v6 = UdpSocket("::1", 0, gso=False, gro=False)
    try:
        assert every.family == socket.AF_INET6
        assert every.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert v4.family == socket.AF_INET
        assert v6.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        # The dual-stack socket reaches an IPv4 peer given as such.
        v4.sock.settimeout(2)
        every.sendto(b"hello", ("127.0.0.1", v4.sock.getsockname()[1]))
        data, src = v4.sock.recvfrom(64)
        assert data == b"hello"
        assert src[0] == "127.0.0.1"
    finally:
        for u in (every, v4, v6):
            u.close()
