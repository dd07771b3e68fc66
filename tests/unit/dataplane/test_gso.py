from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from meshrouter.dataplane.gso import SendBuffer, compact_untrusted
from meshrouter.proto.wire import HEADER, PacketType, parse_header_untrusted
from meshrouter.testing.sessions import session_pair


def test_seal_layout_and_compact_roundtrip() -> None:
    a, b = session_pair()
    a.datagram_size = 1472
    msg = bytes(range(256)) * 200
    out = SendBuffer()
    total, size = a.seal_into(PacketType.DATA, msg, out)
    nseg = -(-total // size)
    assert nseg == -(-(len(msg) + a.tag_bytes) // (size - HEADER.size))
    _, _, counter, _, _ = parse_header_untrusted(out.data, 0, size)
    ct = np.zeros(len(out.data), np.uint8)
    copied = compact_untrusted(out.arr, 0, total, nseg, size, 0, counter, ct)
    assert copied == len(msg) + a.tag_bytes
    whole = ct[:copied].tobytes()
    plain = b.open_untrusted(out.data[:13], counter, whole, nseg, 1.0)
    assert plain == msg
    # A run that skips a segment is refused, so the caller goes datagram by datagram.
    broken = np.frombuffer(bytes(out.data[:size]) + bytes(out.data[2 * size : total]), np.uint8)
    assert compact_untrusted(broken, 0, len(broken), nseg - 1, size, 0, counter, ct) == -1
    # So is a run whose last datagram belongs to another message.
    assert compact_untrusted(out.arr, 0, total, nseg, size, 0, counter + 1, ct) == -1
    # A run from the middle of the message: segments 3.. to the end.
    tail = compact_untrusted(out.arr, 3 * size, total, nseg - 3, size, 3, counter, ct)
    assert ct[:tail].tobytes() == whole[3 * (size - HEADER.size) :]


@given(
    st.binary(max_size=3000),
    st.integers(1, 6),
    st.integers(16, 700),
    st.integers(0, 3000),
    st.integers(0, 70),
)
def test_compact_never_raises_or_overruns(
    data: bytes, count: int, size: int, off: int, first: int
) -> None:
    src = np.frombuffer(data, np.uint8)
    dst = np.zeros(2000, np.uint8)
    end = min(len(data), off + count * size)
    copied = compact_untrusted(src, off, end, count, size, first, 0, dst)
    assert -1 <= copied <= len(dst)
