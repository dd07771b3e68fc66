"""IP address management across the mesh (sans-IO), after Weave's ring.

The allocation range is cut into *tokens*: a token ``start -> (owner, version)``
gives its owner every address from ``start`` up to the next token.  Every
peer holds a copy of the ring and gossips it; copies merge per token by the
greatest ``(version, owner)``.  Only a token's owner rewrites it (to hand a
part of its share to another peer it adds a token at the split point and
bumps versions), and tokens are never removed, so the merge is a join and all
copies converge.  ``rmpeer`` is the one exception, on the operator's word
that a peer is dead.

Each peer allocates from its own share without asking anyone.  A peer that
has no free address asks a neighbour to donate part of its share.  An
explicit address in another peer's share is claimed by asking that owner.

The first ring is made by the lowest-named peer among those reachable, once
it has seen a quorum of the expected initial peers (``init_count // 2 + 1``)
for ``settle`` seconds: two halves of a new mesh cannot both have a quorum,
so they never both claim the range.

Wire format (control message IPAM)::

    RING          kind=1 count(u16) count x [start(u32) owner(6) version(u32)]
    DONATE        kind=2 subnet_start(u32) subnet_prefix(u8)   (0/0: anywhere)
    CLAIM         kind=3 request(u32) addr(u32) ident_len(u8) ident
    CLAIM_REPLY   kind=4 request(u32) status(u8) message_len(u8) message
    RELEASE       kind=5 request(u32, unused) addr(u32) ident_len(u8) ident
    ALLOCS, ALLOCS_ACK  kinds 6 and 7: see ``reclaim``
"""

from __future__ import annotations

import bisect
import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

from meshrouter.base.errors import BadPacket, MeshError
from meshrouter.ipam.reclaim import (
    ALLOCS,
    ALLOCS_ACK,
    decode_ack_untrusted,
    decode_allocs_untrusted,
)

RING, DONATE, CLAIM, CLAIM_REPLY, RELEASE = 1, 2, 3, 4, 5
CLAIM_OK, CLAIM_TAKEN, CLAIM_NOT_OWNER = 0, 1, 2

_TOKEN = struct.Struct("!I6sI")
_U16 = struct.Struct("!H")
_DONATE = struct.Struct("!BIB")
_CLAIM = struct.Struct("!BIIB")
_REPLY = struct.Struct("!BIBB")


@dataclass(frozen=True, slots=True)
class Token:
    owner: bytes
    version: int

    def key(self) -> tuple[int, bytes]:
        return (self.version, self.owner)


class NoSpace(MeshError):
    """This peer has no free address (in the subnet asked for): ask for a donation."""


class NotReady(MeshError):
    """The ring does not exist yet: the mesh has not agreed on who owns what."""


@dataclass
class Allocation:
    addr: int
    ident: str  # who holds it: "peername/container-id"
    ns_path: str = ""  # a network namespace to watch; empty: never reclaimed automatically


def encode_ring(tokens: dict[int, Token]) -> bytes:
    out = bytearray([RING]) + _U16.pack(len(tokens))
    for start in sorted(tokens):
        t = tokens[start]
        out += _TOKEN.pack(start, t.owner, t.version)
    return bytes(out)


def decode_untrusted(payload: bytes) -> tuple[int, Any]:
    """Parse an IPAM payload into ``(kind, value)``.  Raises only BadPacket."""
    if not payload:
        raise BadPacket("empty IPAM message")
    kind = payload[0]
    try:
        if kind == RING:
            (count,) = _U16.unpack_from(payload, 1)
            if len(payload) != 3 + count * _TOKEN.size:
                raise BadPacket("IPAM ring of the wrong length")
            tokens = {}
            for i in range(count):
                start, owner, version = _TOKEN.unpack_from(payload, 3 + i * _TOKEN.size)
                tokens[start] = Token(owner, version)
            return kind, tokens
        if kind == DONATE:
            _, start, prefix = _DONATE.unpack(payload)
            if prefix > 32:
                raise BadPacket("bad subnet prefix")
            return kind, (start, prefix)
        if kind in (CLAIM, RELEASE):
            _, request, addr, n = _CLAIM.unpack_from(payload)
            ident = payload[_CLAIM.size : _CLAIM.size + n].decode()
            return kind, (request, addr, ident)
        if kind == CLAIM_REPLY:
            _, request, status, n = _REPLY.unpack_from(payload)
            msg = payload[_REPLY.size : _REPLY.size + n].decode()
            return kind, (request, status, msg)
        if kind == ALLOCS:
            return kind, decode_allocs_untrusted(payload)
        if kind == ALLOCS_ACK:
            return kind, decode_ack_untrusted(payload)
    except (struct.error, UnicodeDecodeError) as exc:
        raise BadPacket(f"malformed IPAM message: {exc}") from exc
    raise BadPacket(f"unknown IPAM message kind {kind}")


def encode_donate(subnet: ipaddress.IPv4Network | None) -> bytes:
    if subnet is None:
        return _DONATE.pack(DONATE, 0, 0)
    return _DONATE.pack(DONATE, int(subnet.network_address), subnet.prefixlen)


def encode_claim(request: int, addr: int, ident: str, kind: int = CLAIM) -> bytes:
    raw = ident.encode()[:200]
    return _CLAIM.pack(kind, request, addr, len(raw)) + raw


def encode_claim_reply(request: int, status: int, msg: str) -> bytes:
    raw = msg.encode()[:200]
    return _REPLY.pack(CLAIM_REPLY, request, status, len(raw)) + raw


class Ipam:
    def __init__(self, me: bytes, cidr: str, *, init_count: int = 1, settle: float = 2.0) -> None:
        self.me = me
        self.network = ipaddress.IPv4Network(cidr)
        self.start = int(self.network.network_address)
        self.end = int(self.network.broadcast_address) + 1  # exclusive
        self.init_count = max(1, init_count)
        self.settle = settle
        self.tokens: dict[int, Token] = {}
        self._starts: list[int] = []
        self.allocs: dict[int, Allocation] = {}
        self._quorum_since: float | None = None
        self.version = 0  # bumps on every change the shell should persist

    # -- the ring ---------------------------------------------------------

    @property
    def quorum(self) -> int:
        return self.init_count // 2 + 1

    @property
    def ready(self) -> bool:
        return bool(self.tokens)

    def _reindex(self) -> None:
        self._starts = sorted(self.tokens)
        self.version += 1

    def owner_of(self, addr: int) -> bytes | None:
        if not self.start <= addr < self.end or not self._starts:
            return None
        i = bisect.bisect_right(self._starts, addr) - 1
        return self.tokens[self._starts[i]].owner if i >= 0 else None

    def intervals(self) -> list[tuple[int, int, bytes]]:
        """``(start, end, owner)`` of every token, in order."""
        out = []
        for i, s in enumerate(self._starts):
            e = self._starts[i + 1] if i + 1 < len(self._starts) else self.end
            out.append((s, e, self.tokens[s].owner))
        return out

    def mine(self) -> list[tuple[int, int]]:
        return [(s, e) for s, e, o in self.intervals() if o == self.me]

    def maybe_init(self, reachable: set[bytes], now: float) -> bytes | None:
        """Make the ring if it is ours to make; returns the RING to gossip."""
        if self.tokens:
            return None
        if len(reachable) < self.quorum or min(reachable) != self.me:
            self._quorum_since = None
            return None
        if self._quorum_since is None:
            self._quorum_since = now
        if now - self._quorum_since < self.settle:
            return None
        peers = sorted(reachable)
        size = self.end - self.start
        for i, p in enumerate(peers):
            self.tokens[self.start + size * i // len(peers)] = Token(p, 1)
        self._reindex()
        return encode_ring(self.tokens)

    def merge(self, tokens: dict[int, Token]) -> bool:
        """Merge a ring; True if ours changed (pass it on)."""
        changed = False
        for start, tok in tokens.items():
            if not self.start <= start < self.end:
                continue
            cur = self.tokens.get(start)
            if cur is None or tok.key() > cur.key():
                self.tokens[start] = tok
                changed = True
        if changed:
            self._reindex()
        return changed

    def receive_ring_untrusted(self, payload: bytes) -> bytes | None:
        kind, value = decode_untrusted(payload)
        if kind != RING:
            raise BadPacket("expected a ring")
        assert isinstance(value, dict)
        return encode_ring(self.tokens) if self.merge(value) else None

    def _give(self, start: int, end: int, to: bytes) -> None:
        """Hand [start, end) of a token of ours to ``to`` (we own all of it)."""
        base = self._starts[bisect.bisect_right(self._starts, start) - 1]
        tok = self.tokens[base]
        if end < self.end and end not in self.tokens:
            self.tokens[end] = Token(self.me, tok.version + 1)
        cur = self.tokens.get(start)
        version = (cur.version if cur else tok.version) + 1
        self.tokens[start] = Token(to, version)
        self._reindex()

    def donate(self, to: bytes, subnet: ipaddress.IPv4Network | None) -> bytes | None:
        """Give ``to`` the upper half of our largest free stretch; returns the RING."""
        lo, hi = self.bounds(subnet)
        best: tuple[int, int] | None = None
        for s, e in self.mine():
            s, e = max(s, lo), min(e, hi)
            if e - s < 2:
                continue
            used = [a for a in self.allocs if s <= a < e]
            cut = max((s + e) // 2, max(used) + 1 if used else s + (e - s) // 2)
            if e - cut >= 1 and (best is None or e - cut > best[1] - best[0]):
                best = (cut, e)
        if best is None:
            return None
        self._give(best[0], best[1], to)
        return encode_ring(self.tokens)

    def rmpeer(self, peer: bytes) -> tuple[int, bytes | None]:
        """Take over every token of ``peer`` (the operator says it is dead)."""
        n = 0
        for start, tok in list(self.tokens.items()):
            if tok.owner == peer:
                self.tokens[start] = Token(self.me, tok.version + 1)
                n += 1
        if not n:
            return 0, None
        self._reindex()
        return n, encode_ring(self.tokens)

    def take_over(self, peer: bytes, handed_out: dict[int, str]) -> tuple[int, dict[int, str]]:
        """Take over every token of ``peer`` (unreachable long enough, by a
        quorum's say), keeping reserved for the same containers the addresses
        it ``handed_out`` in that share.  Returns (ranges, addresses kept)."""
        keep = {
            a: ident
            for a, ident in handed_out.items()
            if self.owner_of(a) == peer and a not in self.allocs
        }
        n, _ = self.rmpeer(peer)
        if not n:
            return 0, {}
        for a, ident in keep.items():
            self.allocs[a] = Allocation(a, ident)
        self.version += 1
        return n, keep

    def handed_out(self) -> dict[int, str]:
        """Our allocations, as gossiped in our ALLOCS set."""
        return {a: al.ident for a, al in self.allocs.items()}

    def hand_over(self, to: bytes) -> bytes | None:
        """Give every token of ours to ``to`` (this peer leaves the mesh for good)."""
        n = 0
        for start, tok in list(self.tokens.items()):
            if tok.owner == self.me:
                self.tokens[start] = Token(to, tok.version + 1)
                n += 1
        if not n:
            return None
        self._reindex()
        return encode_ring(self.tokens)

    # -- addresses ----------------------------------------------------------

    def bounds(self, subnet: ipaddress.IPv4Network | None) -> tuple[int, int]:
        if subnet is None:
            return self.start, self.end
        return int(subnet.network_address), int(subnet.broadcast_address) + 1

    def _usable(self, addr: int, subnet: ipaddress.IPv4Network | None) -> bool:
        reserved = {self.start, self.end - 1}
        if subnet is not None and subnet.num_addresses > 2:
            reserved |= {int(subnet.network_address), int(subnet.broadcast_address)}
        if addr in reserved or addr in self.allocs:
            return False
        # In ranges wider than a /24, skip x.y.z.0 and x.y.z.255: valid, but
        # software that assumes /24s mistakes them for network or broadcast.
        net = subnet or self.network
        return net.prefixlen >= 24 or addr & 0xFF not in (0, 0xFF)

    def allocate(
        self, ident: str, subnet: ipaddress.IPv4Network | None = None, ns_path: str = ""
    ) -> int:
        """A free address from our share (inside ``subnet``).  Raises NotReady or NoSpace."""
        if not self.tokens:
            raise NotReady()
        for a in self.allocs.values():
            if a.ident == ident and (subnet is None or ipaddress.IPv4Address(a.addr) in subnet):
                return a.addr  # asked again (a retry): the same answer
        lo, hi = self.bounds(subnet)
        for s, e in self.mine():
            for addr in range(max(s, lo), min(e, hi)):
                if self._usable(addr, subnet):
                    self.allocs[addr] = Allocation(addr, ident, ns_path)
                    self.version += 1
                    return addr
        raise NoSpace()

    def claim(self, addr: int, ident: str, ns_path: str = "") -> int:
        """Record ``addr`` for ``ident`` if it is in our share and free."""
        if self.owner_of(addr) != self.me:
            return CLAIM_NOT_OWNER
        cur = self.allocs.get(addr)
        if cur is not None and cur.ident != ident:
            return CLAIM_TAKEN
        if addr in (self.start, self.end - 1):
            return CLAIM_TAKEN
        self.allocs[addr] = Allocation(addr, ident, ns_path)
        self.version += 1
        return CLAIM_OK

    def release(self, ident: str) -> list[int]:
        gone = [a for a, al in self.allocs.items() if al.ident == ident]
        for a in gone:
            del self.allocs[a]
        if gone:
            self.version += 1
        return gone

    def release_addr(self, addr: int) -> bool:
        if self.allocs.pop(addr, None) is None:
            return False
        self.version += 1
        return True

    def misplaced(self) -> list[Allocation]:
        """Allocations of ours in space we no longer own (should never happen)."""
        return [a for a in self.allocs.values() if self.owner_of(a.addr) != self.me]

    def status(self) -> list[dict[str, object]]:
        """Each owner's share: addresses owned and, for us, used."""
        shares: dict[bytes, int] = {}
        for s, e, o in self.intervals():
            shares[o] = shares.get(o, 0) + (e - s)
        return [
            {
                "owner": o,
                "owned": n,
                "used": len(self.allocs) if o == self.me else None,
            }
            for o, n in sorted(shares.items(), key=lambda kv: -kv[1])
        ]
