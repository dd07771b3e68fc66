"""Answers to DNS queries from the mesh's records (sans-IO; dnspython does the wire format).

``Answerer.answer_untrusted(query_bytes, tcp=...)`` returns either ``Reply``
(bytes to send back) or ``Forward`` (a name outside the mesh: the shell asks
the upstream resolvers, and ``servfail`` makes the answer when none does).
What it answers:

* A for a name with records: every address, shuffled on each answer so
  clients spread over the containers of one name;
* AAAA, MX or any other type of a name with records: NOERROR, no answers;
* any name in the mesh domain without records: NXDOMAIN;
* PTR for an address with records (the names); for an address of the mesh
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


class Answerer:
    def __init__(
        self, records: Records, *, domain: str, ttl: int, mesh_range: str, rng: Shuffler
    ) -> None:
        self.records = records
        self.domain = dns.name.from_text(domain)
        self.ttl = ttl
        self.range = ipaddress.IPv4Network(mesh_range)
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
            if addr is not None:
                names = self.records.reverse(addr)
                if names:
                    rrset = dns.rrset.from_text_list(qname, self.ttl, "IN", "PTR", names)
                    return self._reply(query, dns.rcode.NOERROR, tcp, [rrset])
                if ipaddress.IPv4Address(addr) in self.range:
                    return self._reply(query, dns.rcode.NXDOMAIN, tcp)
            return self._forward(data)
        entries = self.records.lookup(text)
        if entries:
            if q.rdtype not in (dns.rdatatype.A, dns.rdatatype.ANY):
                return self._reply(query, dns.rcode.NOERROR, tcp)
            addrs = [e.address for e in entries]
            self.rng.shuffle(addrs)
            rrset = dns.rrset.RRset(qname, dns.rdataclass.IN, dns.rdatatype.A)
            rrset.update_ttl(self.ttl)
            for a in addrs:  # made directly: from_text is the slow part
                rrset.add(A(dns.rdataclass.IN, dns.rdatatype.A, a))  # type: ignore[no-untyped-call]
            return self._reply(query, dns.rcode.NOERROR, tcp, [rrset])
        if qname.is_subdomain(self.domain):
            return self._reply(query, dns.rcode.NXDOMAIN, tcp)
        return self._forward(data)

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
