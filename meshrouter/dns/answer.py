"""Answers to DNS queries from the mesh's records (sans-IO; dnspython does the wire format).

``Answerer.answer_untrusted(query_bytes, tcp=...)`` returns either ``Reply``
(bytes to send back) or ``Forward`` (a name outside the mesh: the shell asks
the upstream resolvers, and ``servfail`` makes the answer when none does).
What it answers:

* A for a name with records: every address, shuffled on each answer so
  clients spread over the containers of one name;
* AAAA for a name with records, with ``--ipalloc-range6``: the IPv6 image
  of each of its addresses in the range (``v6map``: the records carry IPv4
  addresses, and the image is the same on every peer); ANY: both;
* MX or any other type of a name with records (AAAA without IPv6): NOERROR,
  no answers;
* any name in the mesh domain without records: NXDOMAIN;
* PTR for an address with records (the names), of ``in-addr.arpa`` or of
  ``ip6.arpa`` for an image in the IPv6 range; for an address of either
  range without records: NXDOMAIN;
* everything else: forwarded.

The TTL is the router's ``--dns-ttl`` (1 s by default: entries change when
containers come and go, and shuffling only spreads clients that ask again).
A UDP answer larger than the client can take (512 bytes, or its EDNS size)
is sent truncated, with no records and TC set: the client asks again over TCP.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA

from meshrouter.base import v6map
from meshrouter.base.errors import BadPacket
from meshrouter.dns.records import Records

UDP_DEFAULT_SIZE = 512
MAX_UDP_SIZE = 4096


class Shuffler(Protocol):
    def shuffle(self, x: list[Any], /) -> None: ...


@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes
    rcode: str


@dataclass(frozen=True, slots=True)
class Forward:
    query: bytes


def parse_query_untrusted(data: bytes) -> dns.message.Message:
    """A DNS query from the network.  Raises only BadPacket."""
    try:
        msg = dns.message.from_wire(data)
    except Exception as exc:  # dnspython raises many kinds on garbage
        raise BadPacket(f"not a DNS message: {type(exc).__name__}") from None
    if msg.flags & dns.flags.QR:
        raise BadPacket("a DNS response where a query was expected")
    return msg


def reverse_address(name: dns.name.Name) -> int | None:
    """The IPv4 address of a ``d.c.b.a.in-addr.arpa.`` name, else None."""
    labels = name.labels
    if len(labels) != 7 or [x.lower() for x in labels[4:]] != [b"in-addr", b"arpa", b""]:
        return None
    try:
        return int(ipaddress.IPv4Address(".".join(x.decode() for x in reversed(labels[:4]))))
    except (ValueError, UnicodeDecodeError):
        return None


def reverse_address6(name: dns.name.Name) -> ipaddress.IPv6Address | None:
    """The IPv6 address of a ``<32 nibbles>.ip6.arpa.`` name, else None."""
    labels = name.labels
    if len(labels) != 35 or [x.lower() for x in labels[32:]] != [b"ip6", b"arpa", b""]:
        return None
    try:
        nibbles = "".join(x.decode() for x in reversed(labels[:32]))
        if any(len(x) != 1 for x in labels[:32]):
            return None
        return ipaddress.IPv6Address(int(nibbles, 16))
    except (ValueError, UnicodeDecodeError):
        return None


class Answerer:
    def __init__(
        self,
        records: Records,
        *,
        domain: str,
        ttl: int,
        mesh_range: str,
        rng: Shuffler,
        range6: v6map.Range6 | None = None,
    ) -> None:
        self.records = records
        self.domain = dns.name.from_text(domain)
        self.ttl = ttl
        self.range = ipaddress.IPv4Network(mesh_range)
        self.range6 = range6
        self.rng = rng
        self.counters: Counter[str] = Counter()

    def answer_untrusted(self, data: bytes, *, tcp: bool) -> Reply | Forward:
        """The answer to a query from a client.  Raises only BadPacket."""
        self.counters["queries"] += 1
        try:
            query = parse_query_untrusted(data)
        except BadPacket:
            self.counters["dropped"] += 1
            raise
        if query.opcode() != dns.opcode.QUERY:
            return self._reply(query, dns.rcode.NOTIMP, tcp)
        if len(query.question) != 1:
            return self._reply(query, dns.rcode.FORMERR, tcp)
        q = query.question[0]
        if q.rdclass != dns.rdataclass.IN:
            return self._forward(data)
        qname = q.name
        text = qname.to_text().lower()
        if q.rdtype == dns.rdatatype.PTR:
            addr = reverse_address(qname)
            six = reverse_address6(qname) if addr is None else None
            if six is not None and self.range6 is not None:
                origin = self.range6.origin(six)
                if origin is not None:  # an image: named as its IPv4 address is
                    names = self.records.reverse(int(origin))
                    if not names:
                        return self._reply(query, dns.rcode.NXDOMAIN, tcp)
                    rrset = dns.rrset.from_text_list(qname, self.ttl, "IN", "PTR", names)
                    return self._reply(query, dns.rcode.NOERROR, tcp, [rrset])
            if addr is not None:
                names = self.records.reverse(addr)
                if names:
                    rrset = dns.rrset.from_text_list(qname, self.ttl, "IN", "PTR", names)
                    return self._reply(query, dns.rcode.NOERROR, tcp, [rrset])
                if ipaddress.IPv4Address(addr) in self.range:
                    return self._reply(query, dns.rcode.NXDOMAIN, tcp)
            elif six is not None and self.range6 is not None and six in self.range6.v6:
                return self._reply(query, dns.rcode.NXDOMAIN, tcp)
            return self._forward(data)
        entries = self.records.lookup(text)
        if entries:
            addrs = [e.address for e in entries]
            self.rng.shuffle(addrs)
            answer = []
            if q.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY):
                answer.append(self._a(qname, addrs))
            if q.rdtype in (dns.rdatatype.AAAA, dns.rdatatype.ANY):
                aaaa = self._aaaa(qname, addrs)
                answer += [aaaa] if aaaa is not None else []
            return self._reply(query, dns.rcode.NOERROR, tcp, answer)
        if qname.is_subdomain(self.domain):
            return self._reply(query, dns.rcode.NXDOMAIN, tcp)
        return self._forward(data)

    def _a(self, qname: dns.name.Name, addrs: list[str]) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(qname, dns.rdataclass.IN, dns.rdatatype.A)
        rrset.update_ttl(self.ttl)
        for a in addrs:  # made directly: from_text is the slow part
            rrset.add(A(dns.rdataclass.IN, dns.rdatatype.A, a))  # type: ignore[no-untyped-call]
        return rrset

    def _aaaa(self, qname: dns.name.Name, addrs: list[str]) -> dns.rrset.RRset | None:
        """The images of ``addrs`` in the IPv6 range (None: there are none)."""
        if self.range6 is None:
            return None
        rrset = dns.rrset.RRset(qname, dns.rdataclass.IN, dns.rdatatype.AAAA)
        rrset.update_ttl(self.ttl)
        for a in addrs:
            img = self.range6.image(ipaddress.IPv4Interface(f"{a}/{self.range.prefixlen}"))
            if img is not None:
                rrset.add(AAAA(dns.rdataclass.IN, dns.rdatatype.AAAA, str(img.ip)))  # type: ignore[no-untyped-call]
        return rrset if len(rrset) else None

    def _forward(self, data: bytes) -> Forward:
        self.counters["forwarded"] += 1
        return Forward(data)

    def _reply(
        self,
        query: dns.message.Message,
        rcode: dns.rcode.Rcode,
        tcp: bool,
        answer: list[dns.rrset.RRset] | None = None,
    ) -> Reply:
        resp = dns.message.make_response(query, recursion_available=True)
        resp.flags |= dns.flags.AA
        resp.set_rcode(rcode)
        if answer:
            resp.answer.extend(answer)
        limit = 65535 if tcp else _udp_limit(query)
        try:
            wire = resp.to_wire(max_size=limit)
        except dns.exception.TooBig:
            resp.answer.clear()
            resp.flags |= dns.flags.TC
            wire = resp.to_wire(max_size=limit)
            self.counters["truncated"] += 1
        name = dns.rcode.to_text(rcode)
        self.counters[f"rcode_{name}"] += 1
        return Reply(wire, name)

    def servfail(self, data: bytes) -> bytes | None:
        """SERVFAIL for a forwarded query no upstream answered (None if it was garbage)."""
        try:
            query = parse_query_untrusted(data)
        except BadPacket:
            return None
        resp = dns.message.make_response(query, recursion_available=True)
        resp.set_rcode(dns.rcode.SERVFAIL)
        self.counters["rcode_SERVFAIL"] += 1
        return resp.to_wire()


def _udp_limit(query: dns.message.Message) -> int:
    if query.edns >= 0:
        return max(UDP_DEFAULT_SIZE, min(query.payload, MAX_UDP_SIZE))
    return UDP_DEFAULT_SIZE
