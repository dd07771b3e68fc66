"""Dead-peer takeovers across random partitions, with the real IpamService
over an in-memory network that delivers only within a side of the partition.
Trio's MockClock drives time; no root, no sockets.

Properties, checked after every step of every seeded run:
  * no address is ever held by two live containers;
  * a minority side never takes anything over;
and once the mesh heals:
  * nothing is lost: every container's addresses are held for it by whoever
    owns them now (the peer that had been taken over re-homed them);
  * nothing leaks: detaching every container leaves nothing held anywhere;
  * every copy of the ring is the same.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import trio
import trio.testing

from meshrouter.base.errors import IpamError
from meshrouter.base.names import format_name
from meshrouter.ipam.service import IpamService
from meshrouter.testing.ipamnet import IpamNet

PEERS = [bytes([2, 0, 0, 0, 0, i]) for i in range(1, 6)]
RANGE = "10.32.0.0/24"
AFTER = 300.0


def watched(
    net: IpamNet, svc: IpamService, counts: dict[str, int]
) -> Callable[[bytes, dict[int, str]], tuple[int, int]]:
    """``svc.core.take_over``, checking that only a majority side takes over."""
    real = svc.core.take_over

    def take_over(peer: bytes, handed_out: dict[int, str]) -> tuple[int, int]:
        owners = svc.owners()
        assert 2 * len(owners & net.reachable(svc.me)) > len(owners), "a minority took over"
        assert not net.together(svc.me, peer)
        counts["takeovers"] += 1
        return real(peer, handed_out)

    return take_over


async def run(seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    net = IpamNet()
    counts = {"allocated": 0, "refused": 0, "takeovers": 0, "partitions": 0}
    for p in PEERS:
        svc = net.add(p, RANGE, len(PEERS), None, AFTER)
        svc.core.take_over = watched(net, svc, counts)  # type: ignore[method-assign]
    for a in PEERS:  # everyone connected
        for b in PEERS:
            if a < b:
                net.greet(a, b)
    for _ in range(2):  # the ring is made with everyone connected
        net.tick_all()
        await trio.sleep(3)
    assert all(s.core.ready for s in net.services.values())
    live: dict[str, tuple[bytes, str]] = {}  # ident -> (its peer, address)
    n = 0
    for _step in range(60):
        r = rng.random()
        if r < 0.12:  # a new partition (or a heal)
            k = rng.choice([1, 2, 2, 3])
            net.partition({p: rng.randrange(k) for p in PEERS})
            counts["partitions"] += 1
        elif r < 0.55:  # attach a container somewhere
            p = rng.choice(PEERS)
            n += 1
            ident = f"{format_name(p)}/c{n}"
            try:
                with trio.fail_after(120):
                    got = await net.services[p].allocate(ident, "", None)
            except IpamError:
                counts["refused"] += 1
            else:
                live[ident] = (p, got.split("/")[0])
                counts["allocated"] += 1
        elif r < 0.65 and live:  # detach one
            ident = rng.choice(sorted(live))
            p, _ = live.pop(ident)
            net.services[p].release(ident)
        else:  # time passes
            await trio.sleep(rng.choice([5.0, 60.0, 200.0]))
            net.tick_all()
        addresses = [addr for _, addr in live.values()]
        assert len(addresses) == len(set(addresses)), "an address is held twice"
    # Heal and let everything settle: rings meet, cut-off peers re-home.
    net.partition({})
    for _ in range(6):
        net.tick_all()
        for s in net.services.values():
            s.peer.resend_ring()
        net.pump()
        await trio.sleep(3)
    rings = {tuple(sorted(s.core.tokens.items())) for s in net.services.values()}
    assert len(rings) == 1, "the rings did not converge"
    any_svc = next(iter(net.services.values()))
    for ident, (_, address) in live.items():
        addr = int.from_bytes(bytes(int(x) for x in address.split(".")), "big")
        owner = any_svc.core.owner_of(addr)
        assert owner is not None
        held = net.services[owner].core.allocs.get(addr)
        assert held is not None, f"{address} of {ident} was lost"
        assert held.ident == ident, f"{address} of {ident} is held by {held.ident}"
    for s in net.services.values():
        assert s.core.misplaced() == [], "a peer taken over did not re-home its addresses"
    # Nothing leaks: once every container is detached, nothing is held anywhere
    # (reservations for containers removed while their peer was cut off included).
    for ident, (p, _) in live.items():
        net.services[p].release(ident)
    for s in net.services.values():
        assert s.core.allocs == {}, f"left held: {s.core.allocs}"
        assert s.remote == {}
    return counts


@pytest.mark.parametrize("seed", range(12))
async def test_random_partitions_never_double_book_and_lose_nothing(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    counts = await run(seed)
    print(seed, counts)
    assert counts["allocated"] > 0


async def test_the_runs_do_take_over_and_do_refuse(autojump_clock: trio.testing.MockClock) -> None:
    """The property runs above are not vacuous: across them, shares were taken
    over and allocations on cut-off peers were refused."""
    total: dict[str, int] = {}
    for seed in range(12):
        for k, v in (await run(seed)).items():
            total[k] = total.get(k, 0) + v
    print(total)
    assert total["takeovers"] > 0
    assert total["refused"] > 0
    assert total["partitions"] > 0
