"""Simulate topology gossip among many peers over an in-memory network (sans-IO cores, no sockets).

Peers are ``meshrouter.mesh.topology.Gossip`` views, each with the router's
own ``meshrouter.mesh.spread.Spreader`` deciding what goes to whom and when
(coalesced per neighbour, not to who has it, digests every 30 s), joined in
a random connected graph (or a full mesh); messages are delayed and dropped
at random (seeded) and time is trio's MockClock, so a 1,000-peer run takes
seconds to minutes of real time.  After convergence one peer changes its
record, to count what one change costs, then the mesh idles for
``--steady`` seconds, to count what quiet costs.

    python3 -m tools.gossipsim --peers 150 --loss 0.05 --seed 1
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from dataclasses import dataclass

import trio
import trio.testing

from meshrouter.mesh.spread import Spreader
from meshrouter.mesh.topology import ConnInfo, Gossip


@dataclass
class Report:
    peers: int
    edges: int
    converged_at: float | None  # simulated seconds
    messages: int  # to converge
    lost: int
    bytes_per_peer_mean: float  # sent, to converge
    bytes_per_peer_max: int
    change_messages_per_peer: float = math.nan  # one record changed, until all have it
    change_bytes_per_peer: float = math.nan
    steady_bytes_per_peer_per_s: float = math.nan  # idle, after convergence

    def __str__(self) -> str:
        conv = f"{self.converged_at:.2f}s" if self.converged_at is not None else "NOT converged"
        return (
            f"{self.peers} peers, {self.edges} connections: converged in {conv} (simulated), "
            f"{self.messages} messages ({self.lost} lost), gossip sent per peer: "
            f"mean {self.bytes_per_peer_mean / 1024:.1f} KiB, "
            f"max {self.bytes_per_peer_max / 1024:.1f} KiB; one change: "
            f"{self.change_messages_per_peer:.2f} messages and "
            f"{self.change_bytes_per_peer:.0f} B per peer; idle: "
            f"{self.steady_bytes_per_peer_per_s:.0f} B/s per peer"
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
    full_mesh: bool = False,
    loss: float = 0.05,
    seed: int = 0,
    limit: float = 600.0,
    steady: float = 0.0,
) -> Report:
    rng = random.Random(seed)
    n = peers
    if full_mesh:
        nb = [set(range(n)) - {i} for i in range(n)]
    else:
        nb = random_connected_graph(rng, n, n if extra_edges is None else extra_edges)
    names = [i.to_bytes(6, "big") for i in range(n)]
    index = {nm: i for i, nm in enumerate(names)}
    gossips = [Gossip(names[i], rng.getrandbits(64), f"p{i}") for i in range(n)]
    spreads = [Spreader(g, 0.0) for g in gossips]
    wake = [trio.Event() for _ in range(n)]
    # One generator per sending peer: trio shuffles the order in which runnable tasks
    # run, so a shared generator would make the outcome depend on the scheduler.
    rngs = [random.Random(rng.getrandbits(64)) for _ in range(n)]
    counters = {"messages": 0, "lost": 0, "bytes": 0}
    marks: dict[str, tuple[float, int, int]] = {}  # phase -> (time, messages, bytes)

    def converged() -> bool:
        ref = gossips[0].records
        if len(ref) != n:
            return False
        # Versions first (cheap, and where views differ while gossip goes on),
        # then the records whole: asked every 0.05 simulated s, a full
        # comparison of n views of n records was most of a run's time.
        versions = {k: r.version for k, r in ref.items()}
        for g in gossips[1:]:
            recs = g.records
            if len(recs) != n or any(versions.get(k) != r.version for k, r in recs.items()):
                return False
        return all(g.records == ref for g in gossips[1:])

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            def send(src: int, dst: int, payload: bytes) -> None:
                counters["messages"] += 1
                counters["bytes"] += len(payload)
                r = rngs[src]
                if r.random() < loss:
                    counters["lost"] += 1
                    return
                nursery.start_soon(deliver, src, dst, payload, r.uniform(0.001, 0.02))

            async def deliver(src: int, dst: int, payload: bytes, delay: float) -> None:
                await trio.sleep(delay)
                spreads[dst].receive_untrusted(names[src], payload)
                wake[dst].set()

            # Peers start at different times; a connection comes up when both
            # ends have (then each lists it in its record and greets the other).
            starts = [rngs[i].uniform(0, 1.0) for i in range(n)]
            up: list[set[int]] = [set() for _ in range(n)]

            def connection_up(i: int, j: int) -> None:
                up[i].add(j)
                gossips[i].set_connections(
                    ConnInfo(names[k], f"198.18.{k >> 8}.{k & 255}:6783", True, i < k)
                    for k in up[i]
                )
                spreads[i].neighbour_up(names[j], digests=True)
                spreads[i].own_changed()
                wake[i].set()

            async def peer(i: int) -> None:
                await trio.sleep(starts[i])
                for j in nb[i]:
                    if starts[j] <= starts[i]:  # the later of the two opens it
                        connection_up(i, j)
                        connection_up(j, i)
                while True:
                    for to, payload in spreads[i].due(trio.current_time()):
                        send(i, index[to], payload)
                    wake[i] = trio.Event()
                    with trio.move_on_at(spreads[i].next_deadline()):
                        await wake[i].wait()

            async def watch() -> None:
                while trio.current_time() < limit:
                    await trio.sleep(0.05)
                    if converged():
                        break
                else:
                    nursery.cancel_scope.cancel()
                    return
                marks["converged"] = (trio.current_time(), counters["messages"], counters["bytes"])
                # One change: peer 0 gains an address; until every view has it.
                g0 = gossips[0]
                g0.set_connections(
                    [*g0.own.connections, ConnInfo(names[0], "[2001:db8::]:6783", False, False)]
                )
                spreads[0].own_changed()
                wake[0].set()
                while not converged():  # noqa: ASYNC110 (a simulated clock: polling costs nothing)
                    await trio.sleep(0.01)
                marks["changed"] = (trio.current_time(), counters["messages"], counters["bytes"])
                await trio.sleep(steady)
                marks["steady"] = (trio.current_time(), counters["messages"], counters["bytes"])
                nursery.cancel_scope.cancel()

            for i in range(n):
                nursery.start_soon(peer, i)
            nursery.start_soon(watch)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    sent = [s.bytes_sent for s in spreads]
    report = Report(
        peers=n,
        edges=sum(len(s) for s in nb) // 2,
        converged_at=marks["converged"][0] if "converged" in marks else None,
        messages=marks["converged"][1] if "converged" in marks else counters["messages"],
        lost=counters["lost"],
        bytes_per_peer_mean=statistics.mean(sent),
        bytes_per_peer_max=max(sent),
    )
    if "converged" in marks:
        _, m0, b0 = marks["converged"]
        report.bytes_per_peer_mean = b0 / n
        _, m1, b1 = marks["changed"]
        report.change_messages_per_peer = (m1 - m0) / n
        report.change_bytes_per_peer = (b1 - b0) / n
        t1 = marks["changed"][0]
        t2, _, b2 = marks["steady"]
        if t2 > t1:
            report.steady_bytes_per_peer_per_s = (b2 - b1) / n / (t2 - t1)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--peers", type=int, default=120)
    ap.add_argument("--loss", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--full-mesh", action="store_true", help="every peer connected to every other")
    ap.add_argument("--steady", type=float, default=60.0, help="idle seconds measured after")
    args = ap.parse_args()
    print(
        simulate(
            args.peers,
            loss=args.loss,
            seed=args.seed,
            full_mesh=args.full_mesh,
            steady=args.steady,
        )
    )


if __name__ == "__main__":
    main()
