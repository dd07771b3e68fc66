"""Simulate topology gossip among many peers over an in-memory network (sans-IO cores, no sockets).

Peers are ``meshrouter.mesh.topology.Gossip`` instances joined in a random connected
graph; messages are delayed and dropped at random (seeded) and time is trio's
MockClock, so a 200-peer run takes seconds of real time.  Each peer sends its
full view when a connection comes up and every 30 s (anti-entropy, as the
router does), and passes on whatever was news to it.

    python3 -m tools.gossipsim --peers 150 --loss 0.05 --seed 1
"""

from __future__ import annotations

import argparse
import random
import statistics
from dataclasses import dataclass

import trio
import trio.testing

from meshrouter.mesh.topology import ConnInfo, Gossip

FULL_INTERVAL = 30.0


@dataclass
class Report:
    peers: int
    edges: int
    converged_at: float | None  # simulated seconds
    messages: int
    lost: int
    bytes_per_peer_mean: float
    bytes_per_peer_max: int

    def __str__(self) -> str:
        conv = f"{self.converged_at:.2f}s" if self.converged_at is not None else "NOT converged"
        return (
            f"{self.peers} peers, {self.edges} connections: converged in {conv} (simulated), "
            f"{self.messages} messages ({self.lost} lost), gossip sent per peer: "
            f"mean {self.bytes_per_peer_mean / 1024:.1f} KiB, "
            f"max {self.bytes_per_peer_max / 1024:.1f} KiB"
        )


def random_connected_graph(rng: random.Random, n: int, extra: int) -> list[set[int]]:
    nb: list[set[int]] = [set() for _ in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    for k in range(1, n):  # a random spanning tree keeps it connected
        a, b = order[k], order[rng.randrange(k)]
        nb[a].add(b)
        nb[b].add(a)
    for _ in range(extra):
        a, b = rng.randrange(n), rng.randrange(n)
        if a != b:
            nb[a].add(b)
            nb[b].add(a)
    return nb


def simulate(
    peers: int = 120,
    *,
    extra_edges: int | None = None,
    loss: float = 0.05,
    seed: int = 0,
    limit: float = 600.0,
) -> Report:
    rng = random.Random(seed)
    n = peers
    nb = random_connected_graph(rng, n, n if extra_edges is None else extra_edges)
    names = [i.to_bytes(6, "big") for i in range(n)]
    gossips = [Gossip(names[i], rng.getrandbits(64), f"p{i}") for i in range(n)]
    # One generator per sending peer: trio shuffles the order in which runnable tasks
    # run, so a shared generator would make the outcome depend on the scheduler.
    rngs = [random.Random(rng.getrandbits(64)) for _ in range(n)]
    counters = {"messages": 0, "lost": 0}
    converged_at: list[float] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            def send(src: int, dst: int, payload: bytes) -> None:
                counters["messages"] += 1
                r = rngs[src]
                if r.random() < loss:
                    counters["lost"] += 1
                    return
                nursery.start_soon(deliver, src, dst, payload, r.uniform(0.001, 0.02))

            async def deliver(src: int, dst: int, payload: bytes, delay: float) -> None:
                await trio.sleep(delay)
                fwd = gossips[dst].receive_untrusted(payload)
                if fwd is not None:
                    for other in nb[dst] - {src}:
                        send(dst, other, fwd)

            async def peer(i: int) -> None:
                await trio.sleep(rngs[i].uniform(0, 1.0))  # peers start at different times
                update = gossips[i].set_connections(
                    ConnInfo(names[j], f"198.18.{j >> 8}.{j & 255}:6783", True, i < j)
                    for j in nb[i]
                )
                for j in nb[i]:
                    send(i, j, gossips[i].full())
                    if update is not None:
                        send(i, j, update)
                await trio.sleep(rngs[i].uniform(0, FULL_INTERVAL))
                while True:
                    for j in nb[i]:
                        send(i, j, gossips[i].full())
                    await trio.sleep(FULL_INTERVAL)

            async def watch() -> None:
                while trio.current_time() < limit:
                    await trio.sleep(0.05)
                    ref = gossips[0].records
                    if len(ref) == n and all(g.records == ref for g in gossips[1:]):
                        converged_at.append(trio.current_time())
                        break
                nursery.cancel_scope.cancel()

            for i in range(n):
                nursery.start_soon(peer, i)
            nursery.start_soon(watch)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    sent = [g.bytes_sent for g in gossips]
    return Report(
        peers=n,
        edges=sum(len(s) for s in nb) // 2,
        converged_at=converged_at[0] if converged_at else None,
        messages=counters["messages"],
        lost=counters["lost"],
        bytes_per_peer_mean=statistics.mean(sent),
        bytes_per_peer_max=max(sent),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--peers", type=int, default=120)
    ap.add_argument("--loss", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(simulate(args.peers, loss=args.loss, seed=args.seed))


if __name__ == "__main__":
    main()
