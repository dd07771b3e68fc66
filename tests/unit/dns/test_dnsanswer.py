"""Answers from the records, with real DNS messages (dnspython) and no network."""

from __future__ import annotations

import contextlib
import random

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.reversename
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshrouter.base.errors import BadPacket
from meshrouter.base.v6map import parse_range6
from meshrouter.dns.answer import Answerer, Forward, Reply, reverse_address6
from meshrouter.dns.records import Records

ME = bytes([2, 0, 0, 0, 0, 1])


def answerer(n_web: int = 3) -> Answerer:
    r = Records(ME)
    for i in range(1, n_web + 1):
        r.add(f"c{i}", "web.mesh.local.", 0x0A200000 + i, 0.0)
    r.add("db", "db.example.com.", 0xC0000201, 0.0)  # a name outside the domain (dns-add -h)
    return Answerer(r, domain="mesh.local.", ttl=1, mesh_range="10.32.0.0/12", rng=random.Random(1))


def ask(a: Answerer, name: str, rdtype: str = "A", *, tcp: bool = False, **kw: object) -> Reply:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    out = a.answer_untrusted(q.to_wire(), tcp=tcp)
    assert isinstance(out, Reply)
    return out


def addresses(reply: Reply) -> list[str]:
    msg = dns.message.from_wire(reply.data)
    return [r.to_text() for rrset in msg.answer for r in rrset]


def test_a_name_gets_all_its_addresses_shuffled() -> None:
    a = answerer()
    orders = {tuple(addresses(ask(a, "web.mesh.local"))) for _ in range(20)}
    assert {frozenset(o) for o in orders} == {frozenset({"10.32.0.1", "10.32.0.2", "10.32.0.3"})}
    assert len(orders) > 1
    msg = dns.message.from_wire(ask(a, "WEB.mesh.local").data)
    assert msg.answer[0].ttl == 1
    assert msg.flags & dns.flags.AA


def test_unknown_names_in_the_domain_are_nxdomain_and_aaaa_of_known_is_empty() -> None:
    a = answerer()
    assert ask(a, "nope.mesh.local").rcode == "NXDOMAIN"
    aaaa = ask(a, "web.mesh.local", "AAAA")
    assert (aaaa.rcode, addresses(aaaa)) == ("NOERROR", [])
    assert addresses(ask(a, "db.example.com")) == ["192.0.2.1"]


def test_ptr_for_mesh_addresses() -> None:
    a = answerer()
    assert addresses(ask(a, "2.0.32.10.in-addr.arpa", "PTR")) == ["web.mesh.local."]
    assert ask(a, "9.0.32.10.in-addr.arpa", "PTR").rcode == "NXDOMAIN"
    q = dns.message.make_query("8.8.8.8.in-addr.arpa", "PTR")
    assert isinstance(a.answer_untrusted(q.to_wire(), tcp=False), Forward)


def test_other_names_are_forwarded_and_servfail_is_made_for_them() -> None:
    a = answerer()
    q = dns.message.make_query("example.org", "A")
    out = a.answer_untrusted(q.to_wire(), tcp=False)
    assert out == Forward(q.to_wire())
    fail = a.servfail(out.query)
    assert fail is not None
    msg = dns.message.from_wire(fail)
    assert (msg.id, msg.rcode()) == (q.id, dns.rcode.SERVFAIL)


def test_large_answers_are_truncated_over_udp_and_whole_over_tcp() -> None:
    a = answerer(60)
    udp = ask(a, "web.mesh.local")
    msg = dns.message.from_wire(udp.data)
    assert msg.flags & dns.flags.TC
    assert len(udp.data) <= 512
    assert len(addresses(ask(a, "web.mesh.local", tcp=True))) == 60
    assert len(addresses(ask(a, "web.mesh.local", use_edns=0, payload=4096))) == 60


def test_responses_and_garbage_are_refused_and_counted() -> None:
    a = answerer()
    resp = dns.message.make_response(dns.message.make_query("web.mesh.local", "A"))
    for data in (b"", b"\x00" * 5, resp.to_wire()):
        with pytest.raises(BadPacket):
            a.answer_untrusted(data, tcp=False)
    assert a.counters["dropped"] == 3


@given(st.binary(max_size=300))
def test_any_bytes_raise_only_bad_packet(data: bytes) -> None:
    a = answerer()
    with contextlib.suppress(BadPacket):
        a.answer_untrusted(data, tcp=False)


def test_counts_by_rcode() -> None:
    a = answerer()
    ask(a, "web.mesh.local")
    ask(a, "nope.mesh.local")
    assert a.counters["rcode_NOERROR"] == 1
    assert a.counters["rcode_NXDOMAIN"] == 1
    assert a.counters["queries"] == 2


def answerer6() -> Answerer:
    a = answerer()
    a.range6 = parse_range6("fd32::/64", "10.32.0.0/12")
    return a


def test_aaaa_are_the_images_of_the_a_records_in_the_ipv6_range() -> None:
    a = answerer6()
    assert sorted(addresses(ask(a, "web.mesh.local", "AAAA"))) == ["fd32::1", "fd32::2", "fd32::3"]
    both = sorted(addresses(ask(a, "web.mesh.local", "ANY")))
    assert both == ["10.32.0.1", "10.32.0.2", "10.32.0.3", "fd32::1", "fd32::2", "fd32::3"]
    # a name whose address is outside the IPv4 range has no image: no AAAA
    empty = ask(a, "db.example.com", "AAAA")
    assert (empty.rcode, addresses(empty)) == ("NOERROR", [])


def test_ip6_arpa_ptr_of_an_image_names_its_container() -> None:
    a = answerer6()
    name = dns.reversename.from_address("fd32::2")
    assert addresses(ask(a, name.to_text(), "PTR")) == ["web.mesh.local."]
    free = dns.reversename.from_address("fd32::77")
    assert ask(a, free.to_text(), "PTR").rcode == "NXDOMAIN"
    # outside the range: not ours, forwarded
    other = dns.reversename.from_address("2001:db8::1")
    q = dns.message.make_query(other, "PTR")
    assert isinstance(a.answer_untrusted(q.to_wire(), tcp=False), Forward)
    # without IPv6 the router does not answer for ip6.arpa at all
    plain = answerer()
    q = dns.message.make_query(name, "PTR")
    assert isinstance(plain.answer_untrusted(q.to_wire(), tcp=False), Forward)


@given(st.lists(st.text(alphabet="0123456789abcdefgxyz-", max_size=3), max_size=40))
def test_any_ip6_arpa_name_is_parsed_or_refused(labels: list[str]) -> None:
    text = ".".join([*labels, "ip6.arpa."])
    try:
        name = dns.name.from_text(text)
    except dns.exception.DNSException:
        return
    got = reverse_address6(name)
    if got is not None:
        assert dns.reversename.from_address(str(got)) == name
