"""The thread boundary: what the control plane (trio thread) and the forwarder thread share.

Exactly three things cross it, each with one writer:

1. ``Link``: one connection's data path, made whole by the control plane and
   then published.  After publishing, the control plane writes none of its
   fields.  The fields marked *forwarder-owned* (``udp_addr``, which follows
   the peer through NAT, ``next_heartbeat``, ``next_probe``) and everything
   inside ``session`` (counters, replay window, path MTU, nonce counter) are
   written by the forwarder thread only; the control plane reads them.
   One field is the control plane's after publishing: ``punch_to``, where a
   peer behind a NAT says it can be reached (one attribute store, read by
   the forwarder when it hears nothing from the peer).
2. ``LinkTable``: the published links by receiver index and by peer name, and
   the current ``Routes``.  Only the control plane calls its writers
   (``publish``, ``withdraw``, ``set_routes``); each is one dict store or
   delete or one attribute store, atomic under the GIL.  The forwarder sees it
   through ``LinkView``, which has no writers: it only looks links up and
   reads ``routes``, an object that is replaced whole after a topology change
   and never changed in place.
3. ``PlaneStats``: the forwarder's drop and event counters.  The forwarder
   writes them; the control plane takes copies with ``snapshot()`` (a dict
   copy made in C, atomic under the GIL).  The UDP socket's send counters are
   the forwarder's too: ``Forwarder.statistics()`` copies them the same way.

Anything else the forwarder touches (the MAC table, its buffers, packers and
lanes) is its own; the control plane reads only ``len(macs)``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Final, Protocol

from meshrouter.base.errors import BadPacket
from meshrouter.base.lograte import LogLimiter
from meshrouter.dataplane.routes import Routes
from meshrouter.dataplane.session import DataSession

log = logging.getLogger("meshrouter")


class Link:
    """One connection's data path (see the module's rules)."""

    __slots__ = (
        "_udp_addr",
        "e2e",
        "index",
        "label",
        "next_heartbeat",
        "next_probe",
        "peer",
        "punch_to",
        "session",
    )

    def __init__(
        self,
        *,
        index: int,
        peer: bytes,
        label: str,
        session: DataSession,
        udp_addr: tuple[str, int] | None,
        e2e: bool = False,
        punch_to: tuple[str, int] | None = None,
    ) -> None:
        self.index: Final = index  # our receiver index: datagrams to us carry it
        self.peer: Final = peer  # the peer's name
        self.label: Final = label  # for log lines
        self.session: Final = session
        # The peer opens what we seal for it alone inside a relayed message
        # (``send._send_through``): a router of protocol 2 or later.
        self.e2e: Final = e2e
        # The control plane's (see the module's rules): where to send while
        # nothing is heard from the peer (its NAT's mapping, by its gossip).
        self.punch_to = punch_to
        # Forwarder-owned from publication on.
        self._udp_addr: tuple[str, int] | None = None
        self.udp_addr = udp_addr
        self.next_heartbeat = 0.0
        self.next_probe = 0.0

    @property
    def udp_addr(self) -> tuple[str, int] | None:
        """Where the peer's datagrams come from, and ours go (None: nowhere)."""
        return self._udp_addr

    @udp_addr.setter
    def udp_addr(self, addr: tuple[str, int] | None) -> None:
        self._udp_addr = addr
        self.session.state.set_addr(addr)  # the C loop sends there too


class LinkView(Protocol):
    """What the forwarder may see of the ``LinkTable``: lookups only.  The two
    mappings are the same objects for the table's life (changed in place), so
    the forwarder may hold on to them; ``routes`` must be read anew."""

    @property
    def by_index(self) -> Mapping[int, Link]: ...

    @property
    def by_name(self) -> Mapping[bytes, Link]: ...

    @property
    def routes(self) -> Routes: ...

    def subscribe(self, changed: Callable[[], None]) -> None:
        """Call ``changed`` (from the writer's thread) after every change."""


class LinkTable:
    """The published links and routes.  Writers are for the control plane only."""

    __slots__ = ("_by_index", "_by_name", "_listeners", "_routes")

    def __init__(self, routes: Routes | None = None) -> None:
        self._by_index: dict[int, Link] = {}
        self._by_name: dict[bytes, Link] = {}
        self._routes = routes if routes is not None else Routes()
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, changed: Callable[[], None]) -> None:
        """Call ``changed`` after every change (the forwarder's C loop forgets
        what it was told: it must be callable from the control plane's thread)."""
        self._listeners.append(changed)

    def _changed(self) -> None:
        for changed in self._listeners:
            changed()

    @property
    def by_index(self) -> Mapping[int, Link]:
        return self._by_index

    @property
    def by_name(self) -> Mapping[bytes, Link]:
        return self._by_name

    @property
    def routes(self) -> Routes:
        return self._routes

    def publish(self, link: Link, *, keep_old: bool = False) -> None:
        """Make a whole link visible to the forwarder (replacing one to the same
        peer; with ``keep_old``, what arrives on the old one is still taken
        until it is withdrawn)."""
        old = self._by_name.get(link.peer)
        if old is not None and old is not link and not keep_old:
            self.withdraw(old)
        self._by_index[link.index] = link
        self._by_name[link.peer] = link
        self._changed()

    def withdraw(self, link: Link) -> None:
        if self._by_index.get(link.index) is link:
            del self._by_index[link.index]
        if self._by_name.get(link.peer) is link:
            del self._by_name[link.peer]
        self._changed()

    def set_routes(self, routes: Routes) -> None:
        self._routes = routes
        self._changed()

    def __len__(self) -> int:
        return len(self._by_name)


# Every reason the data plane drops a packet or frame for, in both loops (the
# C loop's are its COUNTS without the c_ prefix): the label values of
# mesh_drops_total.  A fixed set, so that no input can make new series; the
# detail (which type, which errno) goes to the rate-limited log.
DROP_REASONS = frozenset(
    {
        # what came in: garbage, forgeries, replays (BadPacket.reason)
        "bad_packet",
        "short_datagram",
        "unknown_type",
        "bad_segments",
        "truncated_frame",
        "replayed",
        "auth_failed",
        "unknown_receiver",
        "own_frame",
        "hop_limit",
        "runt_frame",
        "empty_datagram",
        "message_too_large",
        # where it could not go
        "no_route",
        "relay_refused",  # --relay no: a peer (with an older view) sent us one to pass on
        "e2e_unknown",  # sealed end to end by a peer we hold no session with
        "e2e_bad",  # ... opened, and not a message from that peer to us
        "no_udp_address",
        "next_hop_down",
        # the host's sockets and TAP
        "udp_recv_error",
        "tap_read_error",
        "tap_runt",
        "tap_write_would_block",
        "tap_write_error",
        "send_would_block",
        "send_failed",
        "heartbeat_send_failed",
        "gso_fallback",
        "packed_lost",
    }
)


INTERNAL_ERROR = "internal error in "  # the counters' key of a bug on the data path, then where


class PlaneStats:
    """The forwarder's counters: written by its thread, copied by the control plane."""

    __slots__ = ("_limit", "counters", "drops")

    def __init__(self) -> None:
        self.drops: Counter[str] = Counter()  # input dropped, by reason (DROP_REASONS)
        self.counters: Counter[str] = Counter()  # events (relayed, internal errors)
        self._limit = LogLimiter()

    def bad(self, exc: BadPacket, now: float) -> None:
        """Count a bad packet under its reason; its detail to the log, rarely."""
        self.drops[exc.reason] += 1
        self.detail(exc.reason, str(exc), now)

    def detail(self, reason: str, text: str, now: float) -> None:
        held = self._limit.allow(reason, now)
        if held is not None:
            more = f"; {held} more since the last line" if held else ""
            log.info("dropped (%s): %s%s", reason, text, more)

    def internal_error(self, where: str, exc: Exception) -> None:
        """A bug on the data path: count it, log the first of its kind, keep forwarding."""
        key = f"{INTERNAL_ERROR}{where}: {type(exc).__name__}"
        if not self.counters[key]:
            log.error("%s (logged once; counted in 'mesh status --json')", key, exc_info=exc)
        self.counters[key] += 1

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        """Copies of (drops, counters), safe to take from the other thread."""
        return dict(self.drops), dict(self.counters)
