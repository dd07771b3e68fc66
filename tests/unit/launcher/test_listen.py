"""``--listen``: '::' means every address of both families, and a port in
use on either family is found before anything is made."""

from __future__ import annotations

import socket

import pytest

from meshrouter.base.errors import BadInput
from meshrouter.host.preflight import check_listen


def free_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
        port: int = s.getsockname()[1]
    return port


def test_every_address_of_both_families_when_free() -> None:
    port = free_port()
    check_listen("::", port)
    check_listen("0.0.0.0", port)
    check_listen("::1", port)


@pytest.mark.parametrize(
    ("family", "host", "kind"),
    [
        (socket.AF_INET, "127.0.0.1", socket.SOCK_STREAM),
        (socket.AF_INET, "0.0.0.0", socket.SOCK_DGRAM),
        (socket.AF_INET6, "::1", socket.SOCK_STREAM),
    ],
)
def test_a_port_in_use_on_either_family_is_refused(family: int, host: str, kind: int) -> None:
    port = free_port()
    with socket.socket(family, kind) as taken:
        if family == socket.AF_INET6:
            taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        taken.bind((host, port))
        if kind == socket.SOCK_STREAM:
            taken.listen(1)
        with pytest.raises(BadInput, match=f"port {port} on .* is in use"):
            check_listen("::", port)


def test_not_an_address_says_what_to_give() -> None:
    with pytest.raises(BadInput, match=r"0.0.0.0 \(every IPv4 one\) or :: \(every one\)"):
        check_listen("eth0", 6783)
