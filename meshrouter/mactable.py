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
    __slots__ = ("_entries", "max_age")

    def __init__(self, max_age: float = 300.0) -> None:
        self.max_age = max_age
        self._entries: dict[bytes, _Entry] = {}

    def learn(self, mac: bytes, owner: bytes, now: float) -> bool:
        """Record that ``mac`` was seen at ``owner``; True if that is news."""
        entry = self._entries.get(mac)
        if entry is not None and entry.owner == owner:
            entry.seen = now
            return False
        self._entries[mac] = _Entry(owner, now)
        return True

    def lookup(self, mac: bytes, now: float) -> bytes | None:
        """Where ``mac`` lives, or None if unknown or expired."""
        entry = self._entries.get(mac)
        if entry is None:
            return None
        if now - entry.seen > self.max_age:
            del self._entries[mac]
            return None
        return entry.owner

    def forget_owner(self, owner: bytes) -> int:
        gone = [mac for mac, e in self._entries.items() if e.owner == owner]
        for mac in gone:
            del self._entries[mac]
        return len(gone)

    def expire(self, now: float) -> int:
        old = [mac for mac, e in self._entries.items() if now - e.seen > self.max_age]
        for mac in old:
            del self._entries[mac]
        return len(old)

    def __len__(self) -> int:
        return len(self._entries)
