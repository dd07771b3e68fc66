"""A peer that knows the mesh password and sends a live router garbage
control messages of every type after a real handshake (tests: nothing an
authenticated peer says may stop the router).  TUNNEL gets crafted ones
too: to the router, through it to another peer, with every flag and id;
and GOSSIP records of made-up peers at addresses that do not parse (names
below any router's, so the router means to dial them within a second).
When the router closes the connection for a bad message, it dials again.
Bounded: ``COUNT`` messages, 60 s at most.  Prints "sent N, reconnected M".

    python -m meshrouter.testing.msgfuzz HOST PORT PASSWORD_FILE PEER_HEX COUNT SEED
"""

from __future__ import annotations

import os
import random
import socket
import sys
import time

from meshrouter.mesh.topology import ConnInfo, PeerRecord, encode_records
from meshrouter.mesh.tunnel import encode_tunnel
from meshrouter.proto.control import ConnectionClosed, ControlConnection, MessageType, State
from meshrouter.proto.handshake import Identity, derive_psk

FUZZED = [t for t in MessageType if t not in (MessageType.HEARTBEAT, MessageType.CLOSE)]
BAD_ADDRESSES = ["nocolon", "bad host:1", "[::1", ":", "a:b:c", "[]:x", "198.18.0.250", "x:0"]


def _payload(rng: random.Random, mtype: int, me: bytes, peer: bytes) -> bytes:
    if mtype == MessageType.TUNNEL and rng.random() < 0.7:
        dst = rng.choice([peer, me, bytes(6), os.urandom(6)])
        origin = rng.choice([me, peer, os.urandom(6)])
        data = rng.randbytes(rng.choice([0, 1, 40, 300]))
        flags = rng.choice([0, 1, rng.randrange(256)])
        return encode_tunnel(dst, origin, flags, rng.randrange(2**32), data)
    if mtype == MessageType.GOSSIP and rng.random() < 0.5:
        a, b = bytes(1) + rng.randbytes(5), bytes(1) + rng.randbytes(5)
        addrs = rng.sample(BAD_ADDRESSES, 3)
        conns = tuple(sorted(ConnInfo(b, x, True, False) for x in addrs))
        return encode_records([PeerRecord(a, 1, 1, "fz", conns), PeerRecord(b, 1, 1, "fz", ())])
    return rng.randbytes(rng.choice([0, 1, 5, 17, 64, 700]))


def _handshake(
    host: str, port: int, psk: bytes, name: bytes
) -> tuple[socket.socket, ControlConnection]:
    conn = ControlConnection(
        initiator=True,
        identity=Identity(name=name, nickname="fuzzer", uid=random.getrandbits(63), udp_port=6783),
        psk=psk,
        ephemeral_private=os.urandom(32),
        recv_index=7,
        now=time.monotonic(),
    )
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(conn.data_to_send())
    while conn.result is None:
        data = s.recv(65536)
        if not data:
            raise ConnectionError("the router closed the handshake")
        conn.receive_data(data, time.monotonic())
        s.sendall(conn.data_to_send())
        while (ev := conn.next_event()) is not None:
            if isinstance(ev, ConnectionClosed):
                raise ConnectionError(ev.reason)
    return s, conn


def _exchange(
    s: socket.socket, conn: ControlConnection, rng: random.Random, me: bytes, peer: bytes
) -> bool:
    """Send one garbage message, take what the router said; False: it hung up."""
    mtype = rng.choice(FUZZED)
    conn.send_message(mtype, _payload(rng, mtype, me, peer))
    try:
        s.sendall(conn.data_to_send())
        data = s.recv(65536)
    except TimeoutError:
        return True
    except OSError:
        return False
    if not data:
        return False
    conn.receive_data(data, time.monotonic())
    return True


def main(argv: list[str]) -> int:
    host, port, password_file, peer_hex, count, seed = argv
    rng = random.Random(int(seed))
    psk = derive_psk(open(password_file, "rb").read().strip())  # noqa: SIM115
    me = bytes([0x02]) + os.urandom(5)
    peer = bytes.fromhex(peer_hex)
    deadline = time.monotonic() + 60
    sent = reconnects = 0
    s, conn = _handshake(host, int(port), psk, me)
    s.settimeout(0.01)
    while sent < int(count) and time.monotonic() < deadline:
        if conn.state is not State.OPEN or not _exchange(s, conn, rng, me, peer):
            s.close()  # the router closed it for a bad message: as a peer would, dial again
            reconnects += 1
            s, conn = _handshake(host, int(port), psk, me)
            s.settimeout(0.01)
            continue
        sent += 1
    s.close()
    print(f"sent {sent}, reconnected {reconnects}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
