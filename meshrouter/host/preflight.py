"""What ``mesh launch`` checks before it makes anything: names, the listen
address and port, the peers.  Each check raises ``BadInput`` with one line
saying what is wrong and what to do."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket

from meshrouter.base.constants import LISTEN_ALL
from meshrouter.base.errors import BadInput
from meshrouter.base.inputs import split_address

IFNAMSIZ = 16


def check_ifname(name: str, flag: str) -> None:
    if (
        not 0 < len(name) < IFNAMSIZ
        or name in (".", "..")
        or any(c in "/:" or c.isspace() or not c.isprintable() for c in name)
    ):
        raise BadInput(
            f"{flag} {name!r} is not an interface name: 1 to 15 characters, no '/', ':' or spaces"
        )


def check_names(bridge: str, tap: str) -> None:
    check_ifname(bridge, "--bridge")
    check_ifname(tap, "--tap")
    if bridge == tap:
        raise BadInput(f"--bridge and --tap are both {bridge!r}: give them different names")
    if os.path.exists(f"/sys/class/net/{bridge}") and not os.path.exists(
        f"/sys/class/net/{bridge}/bridge"
    ):
        raise BadInput(f"{bridge} exists and is not a bridge: choose another --bridge")


def check_listen(listen: str, port: int) -> None:
    """The address is one of this host's (or '::', every address of both
    families) and both ports are free on it."""
    if listen in LISTEN_ALL:
        wanted = [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
    else:
        try:
            addr = ipaddress.ip_address(listen)
        except ValueError:
            raise BadInput(
                f"--listen {listen!r} is not an IP address: give one of this host's, "
                "0.0.0.0 (every IPv4 one) or :: (every one)"
            ) from None
        wanted = [(socket.AF_INET6 if addr.version == 6 else socket.AF_INET, listen)]
    for family, host in wanted:
        for kind, proto in ((socket.SOCK_STREAM, "TCP"), (socket.SOCK_DGRAM, "UDP")):
            try:
                s = socket.socket(family, kind)
            except OSError:
                if listen in LISTEN_ALL:
                    continue  # no IPv6 in this kernel: IPv4 alone, as the router does
                raise BadInput(f"--listen {listen}: this kernel has no IPv6") from None
            with s:
                _try_bind(s, kind, family, host, port, proto, listen)


def _try_bind(
    s: socket.socket, kind: int, family: int, host: str, port: int, proto: str, listen: str
) -> None:
    if kind == socket.SOCK_STREAM:  # a closed connection's TIME_WAIT is no user
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        s.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise BadInput(
                f"{proto} port {port} on {host} is in use (another router? "
                f"'ss -lnp sport = :{port}' says who): stop it or choose another --port"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise BadInput(
                f"--listen {listen} is not an address of this host: give one of "
                "its addresses, 0.0.0.0 (every IPv4 one) or :: (every one)"
            ) from None
        raise BadInput(f"cannot listen on {host} {proto} port {port}: {exc}") from None


def check_peer(peer: str, port: int) -> None:
    """A peer address that can be dialled, and is not this router."""
    host, peer_port = split_address(peer, port)
    if peer_port == port and is_local_address(host):
        raise BadInput(f"peer {peer} is this host itself: give the addresses of other hosts")


def is_local_address(host: str) -> bool:
    """Whether ``host`` is an IP address of this host (of the namespace we run
    in), i.e. a socket can be bound to it.  A name is never local here: that a
    name leads back to us shows in the handshake."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if addr.is_unspecified or addr.is_loopback:
        return True
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((str(addr), 0))
        except OSError:
            return False
    return True
