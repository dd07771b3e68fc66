"""Buffers laid out for UDP GSO on send and taken apart after UDP GRO on receive (sans-IO).

A message of several segments is sealed into ``SendBuffer.ct`` and then laid
out in ``SendBuffer.data`` as datagrams of one size (the last may be shorter),
each starting with the datagram header: the shape one GSO ``sendmsg`` wants.
On receive, a GRO read holds consecutive datagrams of one flow;
``compact_untrusted`` joins their bodies back into one ciphertext with one
strided copy when they are the whole run it expects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshrouter.dataplane.pmtu import PROBE_SIZES
from meshrouter.proto.crypto import buffer_ptr
from meshrouter.proto.wire import HEADER, MAX_SEGMENTS

if TYPE_CHECKING:
    import numpy as np

MAX_DATAGRAM = PROBE_SIZES[0]
SEND_BUFFER = MAX_SEGMENTS * MAX_DATAGRAM  # the most one message can become on the wire


def numpy() -> Any:
    """numpy, imported on first use: only the Python loop's segmenting needs
    it, and importing it costs a router (which runs the C loop) 70-100 ms of
    CPU at start-up."""
    import numpy as np

    return np


def byte_array(buffer: bytearray) -> np.ndarray:
    """A uint8 numpy view of ``buffer``, made once by each owner of a buffer."""
    np = numpy()
    return np.frombuffer(buffer, np.uint8)  # type: ignore[no-any-return]


class SendBuffer:
    """Reused memory for sealing: the datagrams (``data``) and, for a message
    that needs several, its ciphertext before it is cut up (``ct``).  Fixed
    size, with their C pointers and numpy views made once."""

    __slots__ = ("_arr", "_ct_arr", "_grids", "ct", "ct_ptr", "data", "ptr", "view")

    def __init__(self, capacity: int = SEND_BUFFER) -> None:
        self.data = bytearray(capacity)
        self.view = memoryview(self.data)
        self.ptr = buffer_ptr(self.data)
        self.ct = bytearray(capacity)
        self.ct_ptr = buffer_ptr(self.ct)
        self._arr: np.ndarray | None = None  # numpy views, made on first use
        self._ct_arr: np.ndarray | None = None
        # (datagram size, full datagrams) -> views for lay_out; few distinct keys.
        self._grids: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @property
    def arr(self) -> np.ndarray:
        """``data`` as a numpy array."""
        if self._arr is None:
            self._arr = byte_array(self.data)
        return self._arr

    @property
    def ct_arr(self) -> np.ndarray:
        """``ct`` as a numpy array."""
        if self._ct_arr is None:
            self._ct_arr = byte_array(self.ct)
        return self._ct_arr

    def lay_out(self, header: bytes, ct_len: int, room: int) -> int:
        """Write ``ct[:ct_len]`` into ``data`` as datagrams of ``header`` (its
        segment byte set per datagram) followed by up to ``room`` bytes of
        ciphertext.  Returns the total.  One strided copy for all full datagrams,
        not a Python loop per segment."""
        hs = len(header)
        size = hs + room
        full, rem = divmod(ct_len, room)
        total = ct_len + (full + (1 if rem else 0)) * hs
        if total > len(self.data):
            raise ValueError("send buffer too small")
        if full:
            views = self._grids.get((size, full))
            if views is None:
                grid = self.arr[: full * size].reshape(full, size)
                src = self.ct_arr[: full * room].reshape(full, room)
                views = self._grids[(size, full)] = (grid[:, :hs], grid[:, hs:], src)
            heads, bodies, src = views
            bodies[:] = src
            np = numpy()
            heads[:] = np.frombuffer(header, np.uint8)
            heads[:, hs - 2] = _segment_numbers()[:full]
        if rem:
            o = full * size
            view = self.view
            view[o : o + hs] = header
            view[o + hs - 2] = full
            view[o + hs : o + hs + rem] = memoryview(self.ct)[full * room : ct_len]
        return total


_SEGMENT_NUMBERS: list[np.ndarray] = []


def _segment_numbers() -> np.ndarray:
    """0, 1, ..., MAX_SEGMENTS - 1 as uint8, made once."""
    if not _SEGMENT_NUMBERS:
        np = numpy()
        _SEGMENT_NUMBERS.append(np.arange(MAX_SEGMENTS, dtype=np.uint8))
    return _SEGMENT_NUMBERS[0]


def compact_untrusted(
    src: np.ndarray,
    off: int,
    end: int,
    count: int,
    size: int,
    first: int,
    counter: int,
    dst: np.ndarray,
) -> int:
    """Copy the bodies of ``count`` consecutive datagrams of ``size`` bytes at
    ``src[off:end]`` (the last may be shorter) back to back into ``dst``, if the
    last of them is segment ``first + count - 1`` of message ``counter``.
    Returns the bytes copied, or -1 if not (the caller then takes them one by one).

    A GRO read holds what one flow sent, in order, so a datagram lost or
    repeated inside the run shifts the last one off its expected place; anything
    else that does not belong makes the whole message fail authentication.
    """
    hs = HEADER.size
    full = count - 1
    last = off + full * size
    if not hs < end - last <= size or end > len(src):
        return -1
    _type, _index, last_counter, last_seg, _nseg = HEADER.unpack_from(src.data, last)
    if last_seg != first + full or last_counter != counter:
        return -1
    room = size - hs
    body = full * room
    if body + end - last - hs > len(dst):
        return -1
    if full:
        dst[:body].reshape(full, room)[:] = src[off:last].reshape(full, size)[:, hs:]
    dst[body : body + end - last - hs] = src[last + hs : end]
    return body + end - last - hs
