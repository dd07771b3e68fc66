"""Topology gossip (sans-IO): peer records, their merge, their encoding, and the Gossip core.

Each peer owns one record: its name, uid (random per start), a version that
it bumps on every change, its nickname, and its connections (to whom, at what
listening address, established or not).  Records spread to every peer over the
control connections.

Merge is a join on a total order: for each name keep the record with the
greatest ``(version, uid)``.  That makes it commutative, associative and
idempotent (a state-based CRDT), so peers converge whatever order gossip
arrives in.  A restarted peer that sees a record of its own name from an
earlier life with a higher version jumps its version above it.

Peers that are unreachable from us over established connections are dropped
after ``gc_after`` seconds (a grace period so a short partition does not make
us forget whom to reconnect to).

Wire format of a TOPOLOGY gossip payload::

    kind=1 (u8) | count (u16) | count x record
    record: name(6) uid(u64) version(u64) nick_len(u8) nick n_conns(u16) n x conn
    conn:   peer(6) flags(u8: 1=established 2=outbound, bits 2-3 the relay role,
            16=behind a NAT)
            addr_len(u8) addr(utf-8 "host:port")

A peer's relay role (``--relay``) rides an entry of its record to itself with
no address (which no release dials): 1 never relays, 2 preferred.  A release
before 0.2 ignores those bits and, passing the record on, drops them; the
record with them orders above, so it wins wherever both arrive.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from meshrouter.base.errors import BadPacket
from meshrouter.dataplane.routes import Routes, symmetric_graph, unicast_next_hops

TOPOLOGY = 1
DIGEST = 2  # name, uid and version of each record held (``spread``)

_REC = struct.Struct("!6sQQB")
_CONN = struct.Struct("!6sBB")
_U16 = struct.Struct("!H")
_DIGEST = struct.Struct("!6sQQ")
MAX_RECORDS = 10_000
MAX_CONNS = 10_000


RELAY_MAY = 0  # the default: relays for others when routes go through it
RELAY_NEVER = 1  # never relays: routes go around it
RELAY_PREFER = 2  # chosen first among equally short paths
RELAY_ROLES = {"yes": RELAY_MAY, "no": RELAY_NEVER, "prefer": RELAY_PREFER}
RELAY_NAMES = {v: k for k, v in RELAY_ROLES.items()}


@dataclass(frozen=True, slots=True, order=True)
class ConnInfo:
    peer: bytes
    address: str  # the remote peer's listening address, host:port
    established: bool
    outbound: bool
    relay: int = RELAY_MAY  # on an entry to itself with no address: its relay role
    nat: bool = False  # ... and whether it is behind a NAT (no one can dial it)


@dataclass(frozen=True, slots=True)
class PeerRecord:
    name: bytes
    uid: int
    version: int
    nickname: str
    connections: tuple[ConnInfo, ...] = ()

    def key(self) -> tuple[int, int, str, tuple[ConnInfo, ...]]:
        """Total order for the merge; content breaks ties so the merge is a true join."""
        return (self.version, self.uid, self.nickname, self.connections)

    def established_peers(self) -> set[bytes]:
        return {c.peer for c in self.connections if c.established}

    def relay_role(self) -> int:
        """``RELAY_MAY``, ``RELAY_NEVER`` or ``RELAY_PREFER``, by its own say."""
        for c in self.connections:
            if c.peer == self.name and not c.address and c.relay in (RELAY_NEVER, RELAY_PREFER):
                return c.relay
        return RELAY_MAY

    def behind_nat(self) -> bool:
        """It says a NAT stands in front of it: a candidate to punch to, or
        (a NAT that maps per destination) the flag on its entry to itself."""
        return any(
            c.peer == self.name and (c.nat or (c.outbound and c.address)) for c in self.connections
        )


def merge(records: dict[bytes, PeerRecord], incoming: Iterable[PeerRecord]) -> list[PeerRecord]:
    """Merge ``incoming`` into ``records`` in place; return the records that won."""
    won = []
    for rec in incoming:
        cur = records.get(rec.name)
        if cur is None or rec.key() > cur.key():
            records[rec.name] = rec
            won.append(rec)
    return won


# -- encoding -----------------------------------------------------------------


def encode_record(r: PeerRecord) -> bytes:
    """One record as it goes on the wire (``encode_records`` is a count and these)."""
    nick = r.nickname.encode()[:64]
    out = bytearray(_REC.pack(r.name, r.uid, r.version, len(nick)))
    out += nick
    out += _U16.pack(len(r.connections))
    for c in r.connections:
        addr = c.address.encode()[:255]
        flags = (1 if c.established else 0) | (2 if c.outbound else 0) | (c.relay & 3) << 2
        flags |= 16 if c.nat else 0
        out += _CONN.pack(c.peer, flags, len(addr)) + addr
    return bytes(out)


def encode_records(
    records: Iterable[PeerRecord], encode: Callable[[PeerRecord], bytes] = encode_record
) -> bytes:
    recs = list(records)
    return b"".join([bytes([TOPOLOGY]), _U16.pack(len(recs)), *map(encode, recs)])


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        if self.pos + st.size > len(self.data):
            raise BadPacket("truncated gossip")
        v = st.unpack_from(self.data, self.pos)
        self.pos += st.size
        return v

    def text(self, n: int) -> str:
        if self.pos + n > len(self.data):
            raise BadPacket("truncated gossip")
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode()
        except UnicodeDecodeError as exc:
            raise BadPacket("gossip text is not UTF-8") from exc


def decode_records_untrusted(
    payload: bytes, held: Callable[[bytes], bytes | None] | None = None
) -> list[PeerRecord]:
    """Parse a TOPOLOGY payload.  A record whose bytes are those ``held(name)``
    gives (our encoding of the record we hold of that name) is left out
    unparsed: merging it would change nothing, and most gossip repeats what
    the receiver has.  Identical bytes are an identical record, as the
    encoding delimits itself.  Raises only BadPacket."""
    if not payload or payload[0] != TOPOLOGY:
        raise BadPacket("not a topology gossip payload")
    r = _Reader(payload)
    r.pos = 1
    (count,) = r.unpack(_U16)
    out = []
    for _ in range(count):
        if held is not None:
            raw = held(payload[r.pos : r.pos + 6])
            if raw is not None and payload.startswith(raw, r.pos):
                r.pos += len(raw)
                continue
        name, uid, version, nick_len = r.unpack(_REC)
        nick = r.text(nick_len)
        (n_conns,) = r.unpack(_U16)
        conns = []
        for _ in range(n_conns):
            peer, flags, alen = r.unpack(_CONN)
            conns.append(
                ConnInfo(
                    peer,
                    r.text(alen),
                    bool(flags & 1),
                    bool(flags & 2),
                    flags >> 2 & 3,
                    bool(flags & 16),
                )
            )
        out.append(PeerRecord(name, uid, version, nick, tuple(sorted(conns))))
    if r.pos != len(payload):
        raise BadPacket("trailing bytes after gossip")
    return out


# -- the gossip core --------------------------------------------------------------


class Gossip:
    """Our view of the mesh.  The shell tells it our connections and feeds it gossip.

    Every method that changes the view returns the payload to send, and to whom
    (``"all"`` neighbours, or all but the sender), so the shell stays thin.
    """

    def __init__(self, name: bytes, uid: int, nickname: str, *, gc_after: float = 60.0) -> None:
        self.me = name
        self.records: dict[bytes, PeerRecord] = {name: PeerRecord(name, uid, 1, nickname)}
        self.gc_after = gc_after
        self._unreachable_since: dict[bytes, float] = {}
        self._routes: Routes | None = None
        self._raw: dict[bytes, tuple[PeerRecord, bytes]] = {}  # name: (record, its bytes)
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def own(self) -> PeerRecord:
        return self.records[self.me]

    def set_connections(self, conns: Iterable[ConnInfo]) -> bytes | None:
        """Update our own record; returns the update to send to all neighbours, if any."""
        new = tuple(sorted(conns))
        own = self.own
        if new == own.connections:
            return None
        self.records[self.me] = PeerRecord(own.name, own.uid, own.version + 1, own.nickname, new)
        self._routes = None
        return self._out(self.encode([self.records[self.me]]))

    def full(self) -> bytes:
        """Everything we know, for a new neighbour or periodic anti-entropy."""
        return self._out(self.encode(self.records.values()))

    def encode(self, records: Iterable[PeerRecord]) -> bytes:
        """``encode_records``, each record encoded once while we hold it."""
        return encode_records(records, self._bytes_of)

    def _bytes_of(self, rec: PeerRecord) -> bytes:
        hit = self._raw.get(rec.name)
        if hit is not None and hit[0] is rec:
            return hit[1]
        raw = encode_record(rec)
        self._raw[rec.name] = (rec, raw)
        return raw

    def _held(self, name: bytes) -> bytes | None:
        """Our encoding of the record we hold of ``name`` (made once: cheaper
        than parsing the record again when it comes back)."""
        rec = self.records.get(name)
        return None if rec is None else self._bytes_of(rec)

    def receive_untrusted(self, payload: bytes) -> bytes | None:
        """Merge a gossip payload; return what to pass on to the other neighbours.

        Raises only BadPacket.
        """
        won = self.receive_records_untrusted(payload)
        return self._out(self.encode(won)) if won else None

    def receive_records_untrusted(self, payload: bytes) -> list[PeerRecord]:
        """Merge a TOPOLOGY payload; the records that were news (ours among
        them when we jumped above a record of an earlier life).  Raises only
        BadPacket."""
        self.bytes_received += len(payload)
        incoming = decode_records_untrusted(payload, self._held)
        mine = [r for r in incoming if r.name == self.me]
        others = [r for r in incoming if r.name != self.me]
        won = merge(self.records, others)
        for r in mine:
            if self._jump_above(r.version, r.uid, r.key()):
                won.append(self.records[self.me])
        if won:
            self._routes = None
        return won

    def _jump_above(self, version: int, uid: int, key: tuple[Any, ...] | None = None) -> bool:
        """A record of our name at ``version`` from ``uid``: if it is from an
        earlier life of ours (or orders above ours), jump our version above it."""
        own = self.own
        above = key > own.key() if key is not None else (version, uid) > (own.version, own.uid)
        if above or (version == own.version and uid != own.uid):
            self.records[self.me] = PeerRecord(
                own.name, own.uid, max(version, own.version) + 1, own.nickname, own.connections
            )
            return True
        return False

    def digest(self) -> bytes:
        """Name, uid and version of every record we hold (for anti-entropy)."""
        recs = list(self.records.values())
        out = bytearray([DIGEST])
        out += _U16.pack(len(recs))
        for r in recs:
            out += _DIGEST.pack(r.name, r.uid, r.version)
        return bytes(out)

    def receive_digest_untrusted(self, payload: bytes) -> tuple[set[bytes], bool]:
        """A neighbour's digest: the names of the records it lacks or holds
        older than ours (to send it), and whether it showed a record of ours
        from an earlier life (we jumped above it).  Raises only BadPacket."""
        self.bytes_received += len(payload)
        if len(payload) < 3 or payload[0] != DIGEST:
            raise BadPacket("not a gossip digest")
        (count,) = _U16.unpack_from(payload, 1)
        if len(payload) != 3 + count * _DIGEST.size:
            raise BadPacket("gossip digest of the wrong length")
        theirs: dict[bytes, tuple[int, int]] = {}
        for i in range(count):
            name, uid, version = _DIGEST.unpack_from(payload, 3 + i * _DIGEST.size)
            theirs[name] = (version, uid)
        jumped = False
        if self.me in theirs:
            version, uid = theirs[self.me]
            jumped = self._jump_above(version, uid)
            if jumped:
                self._routes = None
        lacking = {
            n for n, r in self.records.items() if n not in theirs or theirs[n] < (r.version, r.uid)
        }
        return lacking, jumped

    def _out(self, payload: bytes) -> bytes:
        self.bytes_sent += len(payload)
        return payload

    def routes(self) -> Routes:
        """Next hops and broadcast trees over the symmetric established edges,
        through no peer that never relays and, of equally short paths,
        through preferred relays first (``--relay``)."""
        if self._routes is None:
            edges = {n: r.established_peers() for n, r in self.records.items()}
            graph = symmetric_graph(edges)
            roles = {n: r.relay_role() for n, r in self.records.items()}
            leaves = frozenset(n for n, k in roles.items() if k == RELAY_NEVER)
            preferred = frozenset(n for n, k in roles.items() if k == RELAY_PREFER)
            hops = unicast_next_hops(graph, self.me, leaves, preferred)
            self._routes = Routes(hops, graph, {}, self.me, leaves, preferred)
        return self._routes

    def reachable(self) -> set[bytes]:
        """The peers connected to us, through any peers: those we keep
        records of (and dial), also where no route may go through them."""
        return set(self.routes().connected()) | {self.me}

    def gc(self, now: float) -> list[bytes]:
        """Forget peers that have been unreachable for ``gc_after`` seconds."""
        reach = self.reachable()
        gone = []
        for name in list(self.records):
            if name in reach:
                self._unreachable_since.pop(name, None)
                continue
            since = self._unreachable_since.setdefault(name, now)
            if now - since >= self.gc_after:
                del self.records[name]
                self._raw.pop(name, None)
                del self._unreachable_since[name]
                gone.append(name)
        if gone:
            self._routes = None
        return gone

    def addresses_of(self, name: bytes) -> set[str]:
        """Listening addresses other peers report for ``name``."""
        return {
            c.address
            for r in self.records.values()
            for c in r.connections
            if c.peer == name and c.address and not (r.name == name and c.outbound)
        }

    def candidates_of(self, name: bytes) -> set[str]:
        """UDP addresses ``name`` says the mesh sees it at behind a NAT (``tunnel``)."""
        rec = self.records.get(name)
        if rec is None:
            return set()
        return {c.address for c in rec.connections if c.peer == name and c.outbound and c.address}
