# The C extension's interface (meshrouter/dataplane/_dataplane.c).
from typing import Final

EV_TIMEOUT: Final[int]
EV_WAKE: Final[int]
EV_TAP: Final[int]
EV_TAP_DONE: Final[int]
EV_UDP: Final[int]
EV_PLAIN: Final[int]
EV_TOO_SMALL: Final[int]
COUNTS: tuple[str, ...]

class Session:
    counter: int
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
    def __init__(
        self,
        encrypt: int,
        decrypt: int,
        send_key: bytes,
        recv_key: bytes,
        nonce_bytes: int,
        tag_bytes: int,
        peer_index: int,
        limit: int,
    ) -> None: ...
    def next_counter(self) -> int: ...
    def would_accept(self, counter: int, /) -> bool: ...
    def accept(self, counter: int, /) -> bool: ...
    def set_addr(self, addr: tuple[str, int] | None, /) -> None: ...
    def seal_segments(
        self, frame: bytes | bytearray | memoryview, me: bytes, peer: bytes, out: bytearray, /
    ) -> tuple[int, int, int]: ...

class Loop:
    ev_n: int
    ev_first: int
    ev_off: int
    ev_seg: int
    ev_next: int
    ev_len: int
    ev_dlen: int
    ev_type: int
    ev_index: int
    gso: int
    @property
    def ev_hop(self) -> bytes: ...
    def __init__(
        self,
        tap_fd: int,
        udp_fd: int,
        wake_fd: int,
        me: bytes,
        frame: bytearray,
        recv: bytearray,
        plain: bytearray,
        name: bytearray,
        gso: bool,
        busy_poll: float,
        join: bool = True,
    ) -> None: ...
    def run(self, now: float, timeout: float, /) -> int: ...
    def set_lane(
        self,
        dst: bytes,
        src: bytes,
        peer: bytes,
        hop: bytes,
        session: Session,
        alone_above: int,
        now: float,
        inner: Session | None = None,
        /,
    ) -> None: ...
    def bind(self, index: int, session: Session, /) -> None: ...
    def set_relay(self, dst: bytes, hop: bytes, session: Session, /) -> None: ...
    def bind_sealed(self, index: int, session: Session, peer: bytes, /) -> None: ...
    def seen(self, mac: bytes, origin: bytes, now: float, /) -> None: ...
    def invalidate(self) -> None: ...
    def release(self) -> None: ...
    def counts(self) -> tuple[int, ...]: ...
    def send_errors(self) -> dict[int, int]: ...

def segment(frame: bytes | bytearray | memoryview, full: bool = False) -> list[bytes] | None: ...
def coalesce(frames: list[bytes] | list[bytearray]) -> list[bytes]: ...

class Coalescer:
    def __init__(self, tap_fd: int) -> None: ...
    def add(self, frame: bytes | bytearray | memoryview, /) -> None: ...
    def flush(self) -> None: ...
    def counts(self) -> tuple[int, int, int, int]: ...
