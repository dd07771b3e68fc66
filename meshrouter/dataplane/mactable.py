"""MAC learning table (sans-IO).

Maps a MAC address to where it lives: ``LOCAL`` (behind our own bridge) or the
name of a peer (6 bytes).  Entries expire after ``max_age`` seconds without a frame.
"""

from __future__ import annotations

from typing import Final

LOCAL: Final = b""


def is_multicast(mac: bytes | memoryview) -> bool:
    """Broadcast and multicast MACs have the group bit set."""
    return bool(mac[0] & 1)


class _Entry:
    __slots__ = ("owner", "seen")

    def __init__(self, owner: bytes, seen: float) -> None:
        self.owner = owner
        self.seen = seen


class MacTable:
    """``version`` changes whenever a MAC appears, moves or goes, so a caller
    may cache a lookup for as long as the version it saw stays the same."""

    __slots__ = ("_entries", "max_age", "version")

    def __init__(self, max_age: float = 300.0) -> None:
        self.max_age = max_age
        self._entries: dict[bytes, _Entry] = {}
        self.version = 0

    def learn(self, mac: bytes, owner: bytes, now: float) -> bool:
        """Record that ``mac`` was seen at ``owner``; True if that is news."""
        entry = self._entries.get(mac)
        if entry is not None and entry.owner == owner:
            entry.seen = now
            return False
        self._entries[mac] = _Entry(owner, now)
        self.version += 1
        return True

    def lookup(self, mac: bytes, now: float) -> bytes | None:
        """Where ``mac`` lives, or None if unknown or expired."""
        entry = self._entries.get(mac)
        if entry is None:
            return None
        if now - entry.seen > self.max_age:
            del self._entries[mac]
            self.version += 1
            return None
        return entry.owner

    def expire(self, now: float) -> int:
        old = [mac for mac, e in self._entries.items() if now - e.seen > self.max_age]
        for mac in old:
            del self._entries[mac]
        if old:
            self.version += 1
        return len(old)

    def owners(self) -> dict[bytes, bytes]:
        """A copy of where each MAC lives (MAC -> owner)."""
        return {mac: e.owner for mac, e in self._entries.items()}

    def __len__(self) -> int:
        return len(self._entries)
