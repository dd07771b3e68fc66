"""The mesh's DNS records (sans-IO): entries, their merge, their encoding.

Each entry says "name N has address A, for container C of peer P".  Only its
origin peer P changes an entry: it adds one at version 1 and retracts it with a
*tombstone* at a higher version.  Every peer keeps, per key
``(origin, container, name, address)``, the entry with the greatest
``(version, tombstone)``: a join on a total order, so the merge is commutative,
associative and idempotent (a state-based CRDT) and peers converge whatever
order the gossip arrives in.

A restarted origin may hear of its own entries from an earlier life: one it
does not hold any more is answered with a tombstone above it, one it holds is
re-issued above it (the origin's word is the truth).  Tombstones are kept for
``TOMBSTONE_LIFETIME`` seconds after they were made or heard of, then
dropped; an entry that comes back after that is corrected by its origin as
above, and the entries of a peer gone for good (forgotten by the topology,
or removed with rmpeer) are dropped whole.

Wire format of a DNS gossip payload::

    kind=1 (u8) | count (u16) | count x entry
    entry: origin(6) version(u64) flags(u8: 1=tombstone) addr(4)
           container_len(u8) container(utf-8) name_len(u8) name(ascii, lower case)
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from meshrouter.base.errors import BadPacket

DNS_ENTRIES = 1
TOMBSTONE_LIFETIME = 600.0
MAX_ENTRIES_PER_MESSAGE = 1000  # keeps a message far below the control message limit
MAX_NAME = 253

_HEAD = struct.Struct("!BH")
_ENTRY = struct.Struct("!6sQB4s")
_TOMBSTONE = 1

Key = tuple[bytes, str, str, int]


@dataclass(frozen=True, slots=True)
class Entry:
    origin: bytes
    container: str
    name: str  # fully qualified, lower case, ending with "."
    addr: int  # IPv4 address as an integer
    version: int
    tombstone: bool = False

    @property
    def key(self) -> Key:
        return (self.origin, self.container, self.name, self.addr)

    def order(self) -> tuple[int, bool]:
        return (self.version, self.tombstone)

    @property
    def address(self) -> str:
        return str(ipaddress.IPv4Address(self.addr))


def normalise_name(name: str) -> str:
    """``Web01.Mesh.Local`` -> ``web01.mesh.local.``.  Raises ValueError on a bad name."""
    n = name.strip().lower()
    if not n.endswith("."):
        n += "."
    labels = n[:-1].split(".")
    if len(n) > MAX_NAME or not all(labels):
        raise ValueError(f"invalid DNS name {name!r}")
    for label in labels:
        if len(label) > 63 or not all(c.isascii() and (c.isalnum() or c in "-_") for c in label):
            raise ValueError(f"invalid DNS name {name!r}: letters, digits, '-' and '_' only")
    return n


def encode(entries: Iterable[Entry]) -> bytes:
    items = list(entries)
    if len(items) > 0xFFFF:
        raise ValueError("too many entries for one message")
    out = [_HEAD.pack(DNS_ENTRIES, len(items))]
    for e in items:
        c, n = e.container.encode(), e.name.encode()
        out.append(
            _ENTRY.pack(
                e.origin, e.version, _TOMBSTONE if e.tombstone else 0, e.addr.to_bytes(4, "big")
            )
        )
        out.append(bytes([len(c)]) + c + bytes([len(n)]) + n)
    return b"".join(out)


def encode_chunks(entries: Iterable[Entry]) -> Iterator[bytes]:
    """Messages of at most ``MAX_ENTRIES_PER_MESSAGE`` entries each."""
    items = list(entries)
    for i in range(0, len(items), MAX_ENTRIES_PER_MESSAGE):
        yield encode(items[i : i + MAX_ENTRIES_PER_MESSAGE])


def decode_untrusted(data: bytes) -> list[Entry]:
    """Parse a DNS gossip payload.  Raises only BadPacket."""
    view = memoryview(data)
    if len(view) < _HEAD.size:
        raise BadPacket("DNS gossip too short")
    kind, count = _HEAD.unpack_from(view)
    if kind != DNS_ENTRIES:
        raise BadPacket(f"unknown DNS gossip kind {kind}")
    off = _HEAD.size
    out: list[Entry] = []
    for _ in range(count):
        if off + _ENTRY.size + 1 > len(view):
            raise BadPacket("DNS gossip entry truncated")
        origin, version, flags, addr = _ENTRY.unpack_from(view, off)
        off += _ENTRY.size
        container, off = _string(view, off)
        name, off = _string(view, off)
        try:
            name = normalise_name(name)
        except ValueError:
            raise BadPacket("bad name in DNS gossip") from None
        if not name.endswith(".") or version == 0 or flags & ~_TOMBSTONE:
            raise BadPacket("bad DNS gossip entry")
        out.append(
            Entry(
                origin,
                container,
                name,
                int.from_bytes(addr, "big"),
                version,
                bool(flags & _TOMBSTONE),
            )
        )
    if off != len(view):
        raise BadPacket("trailing bytes after DNS gossip")
    return out


def _string(view: memoryview, off: int) -> tuple[str, int]:
    if off >= len(view):
        raise BadPacket("DNS gossip string truncated")
    n = view[off]
    end = off + 1 + n
    if end > len(view):
        raise BadPacket("DNS gossip string truncated")
    try:
        return bytes(view[off + 1 : end]).decode(), end
    except UnicodeDecodeError:
        raise BadPacket("DNS gossip string is not UTF-8") from None


class Records:
    """One peer's view of every entry of the mesh, and its own entries' source of truth."""

    def __init__(self, me: bytes) -> None:
        self.me = me
        self.entries: dict[Key, Entry] = {}
        self._seen: dict[Key, float] = {}  # when a tombstone was made or heard of
        self._by_name: dict[str, list[Entry]] | None = None
        self.version = 0  # a change counter
        self.own_version = 0  # ... of our own entries: when to save them
        self.banned: set[bytes] = set()  # evicted peers (``ban_origin``)

    # -- merge -----------------------------------------------------------------

    def merge(self, incoming: Iterable[Entry], now: float) -> tuple[list[Entry], list[Entry]]:
        """Merge entries heard from a peer.  Returns (what changed here: pass it
        on to the other neighbours; our own corrections: send them to everyone)."""
        changed: list[Entry] = []
        corrections: list[Entry] = []
        for e in incoming:
            if e.origin in self.banned:
                continue  # an evicted peer's (revoked): never taken in again
            cur = self.entries.get(e.key)
            if e.origin == self.me:
                fix = self._correct_own(e, cur, now)
                if fix is not None:
                    corrections.append(fix)
                continue
            if cur is not None and cur.order() >= e.order():
                continue
            self._put(e, now)
            changed.append(e)
        return changed, corrections

    def _correct_own(self, e: Entry, cur: Entry | None, now: float) -> Entry | None:
        """Entries of ours from elsewhere: an earlier life's, or an echo."""
        if cur is not None and cur.order() >= e.order():
            return None  # an echo, or older than what we say now
        fix = Entry(
            e.origin,
            e.container,
            e.name,
            e.addr,
            e.version + 1,
            tombstone=cur is None or cur.tombstone,
        )
        self._put(fix, now)
        return fix

    def _put(self, e: Entry, now: float) -> None:
        self.entries[e.key] = e
        if e.tombstone:
            self._seen[e.key] = now
        else:
            self._seen.pop(e.key, None)
        self._by_name = None
        self.version += 1
        if e.origin == self.me:
            self.own_version += 1

    # -- our own entries -----------------------------------------------------------

    def add(self, container: str, name: str, addr: int, now: float) -> Entry | None:
        """Register ``name`` -> ``addr`` for our ``container``; None if it already is."""
        key = (self.me, container, name, addr)
        cur = self.entries.get(key)
        if cur is not None and not cur.tombstone:
            return None
        e = Entry(self.me, container, name, addr, (cur.version + 1) if cur else 1)
        self._put(e, now)
        return e

    def remove(
        self, container: str, now: float, *, name: str | None = None, addr: int | None = None
    ) -> list[Entry]:
        """Tombstone our live entries of ``container`` (only those of ``name`` /
        ``addr`` when given).  Returns the tombstones to gossip."""
        out = []
        for e in list(self.entries.values()):
            if (
                e.origin == self.me
                and e.container == container
                and not e.tombstone
                and (name is None or e.name == name)
                and (addr is None or e.addr == addr)
            ):
                t = Entry(e.origin, e.container, e.name, e.addr, e.version + 1, tombstone=True)
                self._put(t, now)
                out.append(t)
        return out

    def own(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.origin == self.me]

    def restore_own(self, entries: Iterable[Entry]) -> None:
        """Load our own entries saved before a restart."""
        for e in entries:
            if e.origin == self.me and not e.tombstone:
                self.entries[e.key] = e
        self._by_name = None

    # -- forgetting -------------------------------------------------------------------

    def ban_origin(self, origin: bytes) -> int:
        """A peer evicted from the mesh (its certificate revoked): its entries
        go, and none of its are taken in again.  Returns how many went."""
        self.banned.add(origin)
        return self.drop_origin(origin)

    def drop_origin(self, origin: bytes) -> int:
        """A peer gone for good: drop every entry of it.  Returns how many."""
        keys = [k for k in self.entries if k[0] == origin]
        for k in keys:
            del self.entries[k]
            self._seen.pop(k, None)
        if keys:
            self._by_name = None
            self.version += 1
        return len(keys)

    def expire(self, now: float) -> int:
        """Drop tombstones older than ``TOMBSTONE_LIFETIME``."""
        old = [k for k, t in self._seen.items() if now - t >= TOMBSTONE_LIFETIME]
        for k in old:
            del self._seen[k]
            del self.entries[k]
        if old:
            self._by_name = None
        return len(old)

    # -- lookups -------------------------------------------------------------------------

    def all(self) -> list[Entry]:
        return list(self.entries.values())

    def live(self) -> list[Entry]:
        return [e for e in self.entries.values() if not e.tombstone]

    def lookup(self, name: str) -> list[Entry]:
        """Live entries of a fully qualified lower-case name (one per address)."""
        if self._by_name is None:
            index: dict[str, list[Entry]] = {}
            for e in self.entries.values():
                if not e.tombstone:
                    index.setdefault(e.name, []).append(e)
            self._by_name = index
        seen: set[int] = set()
        out = []
        for e in self._by_name.get(name, ()):
            if e.addr not in seen:
                seen.add(e.addr)
                out.append(e)
        return out

    def reverse(self, addr: int) -> list[str]:
        """Names with address ``addr``, sorted."""
        return sorted({e.name for e in self.entries.values() if e.addr == addr and not e.tombstone})
