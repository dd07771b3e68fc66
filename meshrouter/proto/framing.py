"""Length-prefixed framing of the TCP control stream (sans-IO).

Each frame is a 4-byte big-endian length followed by that many bytes.  The
reader refuses frames larger than ``max_size`` before buffering them, so a peer
cannot make us hold more than one maximal frame.
"""

from __future__ import annotations

import struct

from meshrouter.base.errors import BadPacket

LENGTH = struct.Struct("!I")


def encode_frame(body: bytes) -> bytes:
    return LENGTH.pack(len(body)) + body


class FrameReader:
    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int) -> None:
        self._buf = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_frame_untrusted(self) -> tuple[bytes, bytes] | None:
        """Return ``(length_header, body)`` of the next whole frame, or None.

        Raises ``BadPacket`` if the announced length is over ``max_size``.
        """
        if len(self._buf) < LENGTH.size:
            return None
        (size,) = LENGTH.unpack_from(self._buf)
        if size > self.max_size:
            raise BadPacket(f"control frame of {size} bytes exceeds limit {self.max_size}")
        end = LENGTH.size + size
        if len(self._buf) < end:
            return None
        header = bytes(self._buf[: LENGTH.size])
        body = bytes(self._buf[LENGTH.size : end])
        del self._buf[:end]
        return header, body
