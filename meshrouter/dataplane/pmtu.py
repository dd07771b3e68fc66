"""Path MTU discovery for the data plane (sans-IO), without IP fragmentation.

Heartbeats double as probes: besides the plain heartbeat, a peer sends padded
heartbeats of each size in ``PROBE_SIZES`` (largest first) that exceeds what
is confirmed.  The other side reports the largest probe it heard in its own
heartbeats (for ``PROBE_MEMORY`` seconds), and that size becomes the datagram
size used towards it.  ``SAFE_DATAGRAM`` is used until a probe is confirmed;
an EMSGSIZE from the kernel falls back to it and starts probing again.
"""

from __future__ import annotations

import math

# Datagram (UDP payload) sizes we probe, largest first: an IPv4 1500 path,
# an IPv6 1500 path, then common tunnels and the IPv6 minimum.
PROBE_SIZES = (1472, 1452, 1400, 1380, 1280, 1232)
SAFE_DATAGRAM = 1232
PROBE_MEMORY = 10.0  # seconds a heard probe size is reported back
# After settling below the largest size, the larger sizes are probed again on
# this many more heartbeats: one probe lost in a burst (a busy receiver, a
# lossy link) costs seconds at a smaller size, not a whole probe interval.
GROWTH_TRIES = 5


class PathMtu:
    """What this side knows of the path towards one peer, and heard from it."""

    __slots__ = ("_heard_at", "_largest_heard", "confirmed", "datagram_size", "growth_tries")

    def __init__(self) -> None:
        self.datagram_size = SAFE_DATAGRAM  # confirmed path MTU, as a UDP payload size
        self.confirmed = False
        self.growth_tries = 0  # probe rounds left to try sizes above a confirmed one soon
        self._largest_heard = 0
        self._heard_at = -math.inf

    def wants_probe(self) -> bool:
        """Whether the next heartbeat should carry probes whatever the interval:
        nothing confirmed yet, or a confirmed size below the largest still
        worth a few more tries."""
        return not self.confirmed or (self.growth_tries > 0 and self.datagram_size < PROBE_SIZES[0])

    def sizes_to_probe(self) -> list[int]:
        """Probe sizes worth sending now: every size above the confirmed one."""
        if self.confirmed and self.growth_tries > 0:
            self.growth_tries -= 1
        out = []
        for size in PROBE_SIZES:
            if size <= self.datagram_size and self.confirmed:
                break
            out.append(size)
        return out

    def report(self, now: float) -> int:
        """The largest probe heard lately (0: none), to tell the peer."""
        return self._largest_heard if now - self._heard_at < PROBE_MEMORY else 0

    def probe_heard(self, datagram_len: int, now: float) -> None:
        if now - self._heard_at >= PROBE_MEMORY:
            self._largest_heard = 0  # an old round: the path may have shrunk
        self._largest_heard = max(self._largest_heard, datagram_len)
        self._heard_at = now

    def peer_reported(self, heard: int) -> None:
        """The peer heard our probes up to ``heard`` bytes."""
        if heard >= SAFE_DATAGRAM and (not self.confirmed or heard > self.datagram_size):
            if not self.confirmed:
                self.growth_tries = GROWTH_TRIES
            self.datagram_size = min(heard, PROBE_SIZES[0])
            self.confirmed = True

    def too_small(self) -> None:
        """The kernel said EMSGSIZE: fall back to the safe size and probe again."""
        self.datagram_size = SAFE_DATAGRAM
        self.confirmed = False
