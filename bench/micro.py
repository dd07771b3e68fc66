"""Per-frame cost of the forwarder, without namespaces: two real Forwarders whose
"TAP" is a SOCK_SEQPACKET socketpair (frame boundaries kept, like a TAP) and
whose UDP sockets talk over loopback.  Measures the sending side (TAP read,
route, seal, send) and the receiving side (receive, open, TAP write) per frame,
for small and large frames, with the C loop and with the pure-Python one
(the C loop's figure includes one call from Python into it per side).

    python3 -m bench.micro
"""

from __future__ import annotations

import statistics
import time

from meshrouter.dataplane.sessionstate import Mode, native_available
from meshrouter.testing.fwdpair import DST_MAC, SRC_MAC, frame, pair
from meshrouter.testing.tcpframes import superframe


def measure(size: int, rounds: int, gap: float, mode: Mode) -> tuple[float, float]:
    """Median microseconds per frame: (send side, receive side).  ``size`` 0:
    a real 62 KB TCP superframe (TSO), cut into segments and joined again."""
    tx, rx = [], []
    with pair(True, (mode, mode)) as (a, b):
        f = frame(size) if size else superframe(DST_MAC, SRC_MAC, mss=1324, payload_len=62000)
        send = a.fwd.pump if mode == "c" else a.fwd.drain_tap
        receive = b.fwd.pump if mode == "c" else b.fwd.drain_udp
        for _ in range(rounds):
            if gap:
                time.sleep(gap)
            a.tap.send(f)
            t0 = time.perf_counter()
            send(time.monotonic())
            t1 = time.perf_counter()
            receive(time.monotonic())
            t2 = time.perf_counter()
            b.tap.recv(70_000)
            tx.append((t1 - t0) * 1e6)
            rx.append((t2 - t1) * 1e6)
    return statistics.median(tx), statistics.median(rx)


def main() -> None:
    print("per-frame forwarder cost, median microseconds (send side / receive side)")
    modes: list[Mode] = ["c", "python"] if native_available() else ["python"]
    for mode in modes:
        print(f" {'C loop' if mode == 'c' else 'pure-Python loop'}:")
        for size, label in (
            (64, "64 B"),
            (1400, "1400 B"),
            (62000, "62 KB frame"),  # no TCP: one message over many datagrams
            (0, "62 KB TCP TSO"),  # cut into segments, one message each, joined again
        ):
            hot = measure(size, 2000 if 0 < size < 10000 else 300, 0.0, mode)
            cold = measure(size, 40, 0.02, mode)
            print(
                f"  {label:10s} back to back: {hot[0]:6.1f} / {hot[1]:6.1f}   "
                f"after 20 ms idle: {cold[0]:6.1f} / {cold[1]:6.1f}"
            )


if __name__ == "__main__":
    main()
