"""IpamService over an in-memory transport: claims at another owner, lost
messages, no answer.  Trio's MockClock drives the timeouts; no root, no sockets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from meshrouter.base.errors import IpamError
from meshrouter.ipam.ring import CLAIM
from meshrouter.ipam.service import CLAIM_TIMEOUT, REACH_WAIT, IpamService
from meshrouter.testing.ipamnet import IpamNet

A = bytes.fromhex("020000000001")
B = bytes.fromhex("020000000002")
RANGE = "10.32.0.0/24"


@dataclass
class Wire:
    """Carries IPAM messages between services; drops the first ``lose`` claims
    each peer sends (a connection that died without anyone noticing yet) and
    counts the claims in ``sent``."""

    lose: dict[bytes, int] = field(default_factory=dict)
    sent: dict[bytes, int] = field(default_factory=dict)
    net: IpamNet = field(init=False)

    def __post_init__(self) -> None:
        self.net = IpamNet(self.deliver)

    def deliver(self, src: bytes, dst: bytes, payload: bytes) -> bool:
        if payload[0] != CLAIM:
            return True
        self.sent[src] = self.sent.get(src, 0) + 1
        if self.lose.get(src, 0) > 0:
            self.lose[src] -= 1
            return False  # accepted by a dead connection: gone
        return True


def ring_of_a(wire: Wire, state_dir: Path | None = None) -> tuple[IpamService, IpamService]:
    """A owns the whole ring (made alone); B has merged it and owns nothing."""
    a = wire.net.add(A, RANGE, 1)
    wire.net.tick(A, 0.0, {A})
    wire.net.tick(A, a.core.settle, {A})  # quorum held for the settle time
    assert a.core.ready
    b = wire.net.add(B, RANGE, 1, state_dir)
    wire.net.greet(A, B)
    return a, b


def pair() -> tuple[Wire, IpamService, IpamService]:
    wire = Wire()
    a, b = ring_of_a(wire)
    assert b.core.ready
    assert b.core.owner_of(int.from_bytes(bytes([10, 32, 0, 9]), "big")) == A
    return wire, a, b


async def test_a_claim_at_another_owner_is_recorded_on_both_sides() -> None:
    _wire, a, b = pair()
    assert await b.claim("10.32.0.9/24", "h2/web", "") == "10.32.0.9/24"
    held = {al.addr: al.ident for al in a.core.allocs.values()}
    assert held == {int.from_bytes(bytes([10, 32, 0, 9]), "big"): "h2/web"}
    assert b.remote == {"h2/web": [(A, held.popitem()[0])]}


async def test_one_of_several_addresses_is_released_alone() -> None:
    """A container with an address of its own owner's share and one claimed in
    another's: releasing one leaves the other held, on both sides; the
    release hook hears which; a repeated claim is recorded once."""
    _wire, a, b = pair()
    assert await b.claim("10.32.0.9/24", "h2/web", "") == "10.32.0.9/24"
    assert await b.claim("10.32.0.9/24", "h2/web", "") == "10.32.0.9/24"
    assert await b.claim("10.32.0.10/24", "h2/web", "") == "10.32.0.10/24"
    assert len(b.remote["h2/web"]) == 2
    assert b.release("h2/web", ["10.32.0.9/24"]) == ["10.32.0.9"]
    nine, ten = (int.from_bytes(bytes([10, 32, 0, x]), "big") for x in (9, 10))
    heard = b.peer.take_released()
    assert heard == [("h2/web", [nine])]
    assert set(a.core.allocs) == {ten}
    assert b.remote == {"h2/web": [(A, ten)]}
    assert b.holder("10.32.0.10") == "h2/web"  # claimed in A's share
    assert a.holder("10.32.0.10") == "h2/web"  # ... and held there
    assert b.holder("10.32.0.77") is None
    assert b.release("h2/web", ["10.32.0.77"]) == []  # not its address: nothing
    with pytest.raises(IpamError, match="invalid address"):
        b.release("h2/web", ["ten"])
    assert b.release("h2/web") == ["10.32.0.10"]
    assert a.core.allocs == {}
    assert b.remote == {}


async def test_a_lost_claim_is_sent_again_until_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire, a, b = pair()
    wire.lose[B] = 2  # the first two copies vanish
    start = trio.current_time()
    assert await b.claim("10.32.0.9/24", "h2/web", "") == "10.32.0.9/24"
    assert wire.sent[B] == 3
    assert trio.current_time() - start < CLAIM_TIMEOUT
    assert [al.ident for al in a.core.allocs.values()] == ["h2/web"]


async def test_a_claim_nobody_answers_fails_with_a_clear_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire, _a, b = pair()
    wire.lose[B] = 1000
    with pytest.raises(IpamError, match=r"did not answer the claim of 10\.32\.0\.9"):
        await b.claim("10.32.0.9/24", "h2/web", "")
    assert 5 <= wire.sent[B] <= 10  # resent every few seconds, not in a busy loop


async def test_a_claim_waits_for_an_owner_out_of_reach_to_come_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The owner restarted a moment ago (out of reach): the claim waits for
    it rather than failing at once, and is granted when it is back."""
    wire, a, b = pair()
    wire.net.partition({A: 0, B: 1})
    wire.net.tick(B, trio.current_time())
    assert not b.peer.can_reach(A)

    async def back_after(delay: float) -> None:
        await trio.sleep(delay)
        wire.net.partition({})
        wire.net.tick_all()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(back_after, REACH_WAIT / 2)
        assert await b.claim("10.32.0.9/24", "h2/web", "") == "10.32.0.9/24"
    assert trio.current_time() - start == pytest.approx(REACH_WAIT / 2)
    assert [al.ident for al in a.core.allocs.values()] == ["h2/web"]


async def test_a_claim_at_an_owner_that_stays_out_of_reach_fails_in_one_line(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire, _a, b = pair()
    wire.net.partition({A: 0, B: 1})
    wire.net.tick(B, trio.current_time())
    start = trio.current_time()
    with pytest.raises(IpamError, match=r"10\.32\.0\.9 belongs to peer .* cannot be reached"):
        await b.claim("10.32.0.9/24", "h2/web", "")
    assert trio.current_time() - start == pytest.approx(REACH_WAIT)
    assert wire.sent.get(B, 0) == 0  # nothing sent into the void


async def test_a_claim_of_an_address_in_use_is_refused() -> None:
    _wire, a, b = pair()
    await a.claim("10.32.0.9/24", "h1/db", "")
    with pytest.raises(IpamError, match="already in use"):
        await b.claim("10.32.0.9/24", "h2/web", "")


async def test_claims_in_another_share_are_released_when_the_container_goes(
    tmp_path: Path,
) -> None:
    """The claimer watches its container's namespace and sends RELEASE; the
    claim survives a restart of the claimer (persisted)."""
    wire = Wire()
    a, b = ring_of_a(wire, tmp_path)
    ns = tmp_path / "netns-web"
    ns.write_text("")
    await b.claim("10.32.0.9/24", "h2/web", str(ns))
    b.close()
    b = wire.net.add(B, RANGE, 1, tmp_path)  # restarted
    assert b.remote_ns == {"h2/web": str(ns)}
    ns.unlink()  # the container is removed without detach
    b.reap()  # what its namespace watch finds within RECLAIM_INTERVAL
    wire.net.tick(B, 100.0, {A, B})
    assert a.core.allocs == {}
    assert b.remote == {}


async def test_a_namespace_the_router_cannot_see_is_never_taken_for_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _wire, a, _b = pair()
    got = await a.allocate("h1/web", "/proc/999999999/ns/net", None)
    a.reap()
    _wire.net.tick(A, 100.0, {A})
    assert [al.ident for al in a.core.allocs.values()] == ["h1/web"]
    assert got.startswith("10.32.0.")
    assert "--pid host" in caplog.text


async def test_a_stopped_container_keeps_its_address_until_it_is_removed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Issue 23: a namespace that vanished belongs to a container that may
    only have stopped; its engine is asked (``still_there``) before anything
    is released, and again every STOPPED_RECHECK seconds."""
    from meshrouter.ipam.service import RECLAIM_INTERVAL, STOPPED_RECHECK

    _wire, a, _b = pair()
    ns = tmp_path / "pid-ns"
    ns.write_text("")
    got = await a.allocate("h1/web", str(ns), None)
    exists = {"h1/web": True}
    asked: list[str] = []

    async def still_there(idents: set[str]) -> set[str]:
        asked.extend(idents)
        await trio.sleep(0.5)  # an engine takes a moment to answer
        return {i for i in idents if exists.get(i, False)}

    a.still_there = still_there
    ns.unlink()  # docker stop: the namespace goes, the container stays
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.watch_namespaces)
        await trio.sleep(STOPPED_RECHECK * 3)
        assert [al.ident for al in a.core.allocs.values()] == ["h1/web"]
        # Asked at each look a few times (a removal takes a moment), then
        # every STOPPED_RECHECK, not every 5 s.
        assert 5 <= len(asked) <= 8, asked
        assert not a.take_reaped()
        exists["h1/web"] = False  # docker rm
        await trio.sleep(STOPPED_RECHECK + RECLAIM_INTERVAL)
        assert a.core.allocs == {}
        assert a.take_reaped()
        nursery.cancel_scope.cancel()
    assert got.startswith("10.32.0.")


async def test_a_container_started_again_is_watched_at_its_new_namespace(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    from meshrouter.ipam.service import RECLAIM_INTERVAL

    _wire, a, _b = pair()
    old, new = tmp_path / "pid-1", tmp_path / "pid-2"
    old.write_text("")
    got = await a.allocate("h1/web", str(old), None)

    async def always(idents: set[str]) -> set[str]:
        return idents

    async def never(idents: set[str]) -> set[str]:
        return set()

    a.still_there = always
    old.unlink()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.watch_namespaces)
        await trio.sleep(RECLAIM_INTERVAL * 2)
        new.write_text("")  # docker start; the router claims the same address again
        assert await a.claim(got, "h1/web", str(new)) == got
        await trio.sleep(RECLAIM_INTERVAL * 2)
        a.still_there = never  # it is gone, when asked
        new.unlink()
        await trio.sleep(RECLAIM_INTERVAL * 2)
        assert a.core.allocs == {}  # its new namespace went: asked, released
        nursery.cancel_scope.cancel()


async def test_a_container_removed_soon_after_it_started_again_is_released_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Found stopped, started again (a new namespace) and removed before the
    next look: its engine is asked at the next look, not STOPPED_RECHECK later."""
    from meshrouter.ipam.service import RECLAIM_INTERVAL

    _wire, a, _b = pair()
    old, new = tmp_path / "pid-1", tmp_path / "pid-2"
    old.write_text("")
    got = await a.allocate("h1/web", str(old), None)
    alive = True

    async def engine(idents: set[str]) -> set[str]:
        return idents if alive else set()

    a.still_there = engine
    old.unlink()  # stopped
    await a.reap_checked()
    assert a.core.allocs  # kept
    new.write_text("")
    await a.claim(got, "h1/web", str(new))  # started again, re-attached
    new.unlink()  # ... and removed before the next look
    alive = False
    await trio.sleep(RECLAIM_INTERVAL)
    await a.reap_checked()
    assert a.core.allocs == {}


async def test_a_full_disk_under_ipam_db_is_logged_and_saved_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 23, part 7: the router keeps serving when ipam.db cannot be
    written; the state is saved once there is room again."""
    import sqlite3

    wire = Wire()
    _a, b = ring_of_a(wire, tmp_path)
    assert b.store is not None
    real = b.store._save

    def full(*args: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(b.store, "_save", full)
    got = await b.claim("10.32.0.9/24", "h2/web", "")  # its settle cannot save
    assert got == "10.32.0.9/24"
    assert "database or disk is full" in caplog.text
    assert "kept in memory" in caplog.text
    assert b.store.saved_version != b.peer.version
    monkeypatch.setattr(b.store, "_save", real)  # room again
    b.settle()
    assert b.store.saved_version == b.peer.version
    b.close()
    again = wire.net.add(B, RANGE, 1, tmp_path)
    assert again.remote == {"h2/web": [(A, int.from_bytes(bytes([10, 32, 0, 9]), "big"))]}
