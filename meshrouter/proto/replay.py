"""Sliding anti-replay window over 64-bit packet counters (in the spirit of RFC 6479).

A counter is accepted once; counters more than ``size`` behind the highest
accepted one are refused as too old.  The bitmap is a Python int: bit ``k``
set means ``top - k`` was seen.
"""

from __future__ import annotations


class ReplayWindow:
    __slots__ = ("_bits", "_mask", "size", "top")

    def __init__(self, size: int = 4096) -> None:
        if size <= 0:
            raise ValueError("window size must be positive")
        self.size = size
        self._mask = (1 << size) - 1
        self.top = -1
        self._bits = 0

    def would_accept(self, counter: int) -> bool:
        """True if ``counter`` is new and not too old (does not record it)."""
        if counter > self.top:
            return True
        offset = self.top - counter
        if offset >= self.size:
            return False
        return not (self._bits >> offset) & 1

    def accept(self, counter: int) -> bool:
        """Record ``counter``; return False if it is a replay or too old."""
        if counter > self.top:
            shift = counter - self.top
            self._bits = ((self._bits << shift) | 1) & self._mask if shift < self.size else 1
            self.top = counter
            return True
        offset = self.top - counter
        if offset >= self.size:
            return False
        bit = 1 << offset
        if self._bits & bit:
            return False
        self._bits |= bit
        return True
