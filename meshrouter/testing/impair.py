"""A bad network below the mesh, for tests: a userspace relay that joins two
interfaces of a namespace (the lab's switch) and reorders, duplicates and
delays the mesh's UDP datagrams on the way (this kernel has no netem, and no
NFQUEUE).  Everything else (ARP, the TCP control connections) passes as it
came.  Frames move with AF_PACKET sockets, one per interface; the relay is
bounded in time (``--seconds``) and prints what it did as JSON when it ends.

    python3 -m meshrouter.testing.impair u1 u2 --reorder 0.05 --duplicate 0.02 \\
        --delay-ms 1 --seconds 60

Reordering holds a datagram back until the next one of the same direction
has gone (a swap); duplication sends one twice; delay holds every datagram
``delay_ms`` before it goes.  Seeded: a run is repeatable.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import random
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
PORT = 6783


@dataclass
class Counts:
    frames: int = 0
    datagrams: int = 0
    reordered: int = 0
    duplicated: int = 0


def _is_mesh_udp(frame: bytes) -> bool:
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00" or frame[14 + 9] != 17:
        return False
    ihl = (frame[14] & 0x0F) * 4
    sport, dport = struct.unpack_from("!HH", frame, 14 + ihl)
    return PORT in (sport, dport)


def relay(
    a: str, b: str, *, reorder: float, duplicate: float, delay: float, seconds: float, seed: int
) -> Counts:
    rnd = random.Random(seed)
    socks = {}
    for name in (a, b):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((name, 0))
        s.setblocking(False)
        socks[name] = s
    other = {a: socks[b], b: socks[a]}
    held: dict[str, bytes | None] = {a: None, b: None}  # a datagram kept back, by direction
    due: list[tuple[float, int, str, bytes]] = []  # (when, seq, out interface, frame)
    seq = 0
    counts = Counts()
    stop = time.monotonic() + seconds
    done = False

    def end(*_: object) -> None:
        nonlocal done
        done = True

    signal.signal(signal.SIGTERM, end)
    fds = {s.fileno(): name for name, s in socks.items()}
    while not done and time.monotonic() < stop:
        timeout = max(0.0, min(0.05, (due[0][0] - time.monotonic()) if due else 0.05))
        ready, _, _ = select.select(list(fds), [], [], timeout)
        now = time.monotonic()
        for fd in ready:
            src = fds[fd]
            while True:
                try:
                    frame, addr = socks[src].recvfrom(65536)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue  # what we (or the host) sent out of this port
                counts.frames += 1
                out: list[bytes] = [frame]
                if _is_mesh_udp(frame):
                    counts.datagrams += 1
                    if rnd.random() < duplicate:
                        counts.duplicated += 1
                        out.append(frame)
                    if held[src] is None and rnd.random() < reorder:
                        held[src] = frame  # goes after the next one
                        counts.reordered += 1
                        continue
                    if held[src] is not None:
                        out.append(held[src])  # type: ignore[arg-type]
                        held[src] = None
                for f in out:
                    seq += 1
                    heapq.heappush(due, (now + delay, seq, src, f))
        while due and due[0][0] <= now:
            _, _, src, f = heapq.heappop(due)
            with contextlib.suppress(OSError):  # a full queue: lost, as on a wire
                other[src].send(f)
    for s in socks.values():
        s.close()
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--reorder", type=float, default=0.0)
    ap.add_argument("--duplicate", type=float, default=0.0)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("ready", flush=True)
    counts = relay(
        args.a,
        args.b,
        reorder=args.reorder,
        duplicate=args.duplicate,
        delay=args.delay_ms / 1000,
        seconds=args.seconds,
        seed=args.seed,
    )
    print(json.dumps(asdict(counts)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
