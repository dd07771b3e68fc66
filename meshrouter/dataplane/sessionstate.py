"""Which data plane forwards: the C loop (``_dataplane.c``) or the pure-Python one.

The C extension is optional: ``pip install`` builds it when a C compiler is
there, and the router falls back to the pure-Python forwarder without it.
Either way the decisions are Python's (``send``, ``receive``); the C loop
only repeats them per message.

What one link's data path keeps that both the C loop and Python touch (the
nonce counter, the replay window, the path's datagram size, the peer's
address, the counters) is a ``SessionState``: the extension's ``Session``
when it is built, else ``PySessionState``.  Both are used only by the
forwarder's thread, except the counters, which the control plane reads.
"""

from __future__ import annotations

import math
from typing import Final, Literal, Protocol

from meshrouter.base.constants import NONCE_HARD_LIMIT
from meshrouter.proto.crypto import SUITES, Suite, raw_functions
from meshrouter.proto.replay import ReplayWindow

try:
    from meshrouter.dataplane import _dataplane as native
except ImportError:  # built without a C compiler: the pure-Python forwarder
    native = None  # type: ignore[assignment]

__all__ = [
    "MODES",
    "Mode",
    "PySessionState",
    "SessionState",
    "native",
    "native_available",
    "new_state",
    "use_native",
]

Mode = Literal["auto", "c", "python"]
MODES: Final = ("auto", "c", "python")


class SessionState(Protocol):
    counter: int  # read-only in C: take counters with next_counter()
    datagram_size: int
    heard_at: float
    tx_packets: int
    tx_messages: int
    tx_frames: int
    tx_bytes: int
    rx_packets: int
    rx_messages: int
    rx_frames: int
    rx_bytes: int

    @property
    def top(self) -> int: ...

    def next_counter(self) -> int: ...

    def would_accept(self, counter: int, /) -> bool: ...

    def accept(self, counter: int, /) -> bool: ...

    def set_addr(self, addr: tuple[str, int] | None, /) -> None: ...


class PySessionState(ReplayWindow):
    """``SessionState`` in Python (the replay window is the base class)."""

    __slots__ = (
        "counter",
        "datagram_size",
        "heard_at",
        "limit",
        "rx_bytes",
        "rx_frames",
        "rx_messages",
        "rx_packets",
        "tx_bytes",
        "tx_frames",
        "tx_messages",
        "tx_packets",
    )

    def __init__(self, limit: int = NONCE_HARD_LIMIT) -> None:
        super().__init__()
        self.limit = limit
        self.counter = 0
        self.datagram_size = 1232
        self.heard_at = -math.inf
        self.tx_packets = self.tx_messages = self.tx_frames = self.tx_bytes = 0
        self.rx_packets = self.rx_messages = self.rx_frames = self.rx_bytes = 0

    def next_counter(self) -> int:
        """The next send counter (nonce), or -1 once the limit is reached."""
        n = self.counter
        if n >= self.limit:
            return -1
        self.counter = n + 1
        return n

    def set_addr(self, addr: tuple[str, int] | None, /) -> None:
        """Only the C loop sends by itself."""


def native_available() -> bool:
    return native is not None


def use_native(mode: Mode) -> bool:
    """Whether a forwarder in ``mode`` runs the C loop.  ``"c"`` without the
    extension is an error that says how to get it."""
    if mode == "c" and native is None:
        raise ValueError(
            "--dataplane c: the C data plane is not built (install a C compiler and the "
            "Python headers, then reinstall meshrouter), or use --dataplane auto"
        )
    return mode != "python" and native is not None


def new_state(
    suite: Suite,
    send_key: bytes,
    recv_key: bytes,
    peer_index: int,
    *,
    pure: bool = False,
    limit: int = NONCE_HARD_LIMIT,
) -> SessionState:
    """The shared state of a new data session (C when built, unless ``pure``)."""
    if pure or native is None:
        return PySessionState(limit)
    info = SUITES[suite]
    enc, dec = raw_functions(suite)
    return native.Session(
        enc,
        dec,
        send_key[:32].ljust(32, b"\0"),
        recv_key[:32].ljust(32, b"\0"),
        info.nonce_bytes,
        info.tag_bytes,
        peer_index,
        limit,
    )
