"""The cost of a control-connection handshake: by the mesh password, and by
certificates (issue 26), side by side, in memory (``ConnectionPair``: both
ends in this process, no network).  Each handshake is both sides' work: the
X25519 exchange, the KDFs and MACs, and with certificates two Ed25519
signatures and four verifications (a certificate and a transcript each way).
The password's Argon2id stretch is not in it: it runs once at launch.

    python3 -m bench.handshake            # 2000 of each, alternated
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from meshrouter.proto.handshake import AUTH_CERT
from meshrouter.testing.control import ConnectionPair, MeshCa, identity, psk


def one(ca: MeshCa | None) -> float:
    kw = {}
    if ca is not None:
        kw = {
            "ident_a": identity(1, auth=AUTH_CERT, uid=int.from_bytes(os.urandom(8))),
            "ident_b": identity(2, auth=AUTH_CERT),
            "creds_a": ca.creds(1),
            "creds_b": ca.creds(2),
        }
    start = time.perf_counter()
    p = ConnectionPair(**kw)  # type: ignore[arg-type]
    p.pump()
    took = time.perf_counter() - start
    assert p.a.result is not None
    assert (p.a.result.cert is not None) == (ca is not None)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000)
    a = ap.parse_args()
    ca = MeshCa()
    psk(b"secret")  # the Argon2id stretch, once, outside the timing
    times: dict[str, list[float]] = {"password": [], "certificate": []}
    for _ in range(a.count):
        times["password"].append(one(None))
        times["certificate"].append(one(ca))
    med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    print(f"{'handshake':<12} {'median':>10} {'per second':>12}")
    for k, v in med.items():
        print(f"{k:<12} {v:>8.0f} us {1e6 / v:>12.0f}")
    print(f"certificate / password: {med['certificate'] / med['password']:.2f}x")


if __name__ == "__main__":
    main()
