"""An attach interrupted while its IPAM request is in flight: the router may
have answered just before the signal, and could not tell that nobody read
the answer; the attach gives back what it may have been given."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator

import pytest

from meshrouter.attachments import attach
from meshrouter.attachments.interrupts import Interrupted
from meshrouter.engines.containers import Container

NET = ipaddress.IPv4Network("10.32.0.0/12")
C = Container("c1", "netns", "/run/netns/c1", "c1", "c1")


class AnsweredThenInterrupted:
    """An IPAM that grants each request, and is interrupted after the
    ``fail_at``-th grant as if the signal came before the answer was read."""

    def __init__(self, fail_at: int, held: list[str] | None = None) -> None:
        self.fail_at = fail_at
        self.held: dict[str, list[str]] = {C.ident: list(held or [])}
        self.asked = 0
        self.next = 1

    def _grant(self, cidr: str) -> str:
        self.held.setdefault(C.ident, []).append(cidr)
        self.asked += 1
        if self.asked == self.fail_at:
            raise Interrupted
        return cidr

    def allocate(self, container: str, ns_path: str, subnet: str | None) -> str:
        self.next += 1
        return self._grant(f"10.32.0.{self.next}/12")

    def claim(self, cidr: str, container: str, ns_path: str) -> str:
        return self._grant(cidr)

    def release(self, container: str, addrs: list[str] | None = None) -> None:
        have = self.held.get(container, [])
        self.held[container] = [] if addrs is None else [a for a in have if a not in addrs]


@contextlib.contextmanager
def no_abort() -> Iterator[None]:
    yield


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_new_container_interrupted_mid_request_holds_nothing(fail_at: int) -> None:
    ipam = AnsweredThenInterrupted(fail_at)
    wants = [attach.Want(), attach.Want(cidr="10.32.5.5/12"), attach.Want()]
    chosen = [None, ipaddress.IPv4Interface("10.32.5.5/12"), None]
    with pytest.raises(attach.AttachInterrupted, match="nothing was attached"):
        attach._addresses(ipam, C, wants, chosen, [], NET, no_abort)
    assert ipam.held[C.ident] == []


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_container_adding_addresses_keeps_what_it_held(fail_at: int) -> None:
    ipam = AnsweredThenInterrupted(fail_at, held=["10.32.0.9/12"])
    wants = [attach.Want(cidr="10.32.5.5/12"), attach.Want(cidr="10.32.6.6/12")]
    chosen = [ipaddress.IPv4Interface(w.cidr or "") for w in wants]
    with pytest.raises(attach.AttachInterrupted):
        attach._addresses(ipam, C, wants, chosen, ["10.32.0.9/12"], NET, no_abort)
    assert ipam.held[C.ident] == ["10.32.0.9/12"]
