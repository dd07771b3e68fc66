"""The mesh core with no network: cores joined in memory by ``MeshNet``."""

from __future__ import annotations

import logging

import pytest

from meshrouter.base.constants import REKEY_AFTER_MESSAGES, UDP_TIMEOUT
from meshrouter.base.errors import LocalProtocolError, OperatorError
from meshrouter.contract.status import ConnState, TargetState
from meshrouter.daemon import commands
from meshrouter.dataplane.routes import bfs_parents
from meshrouter.dataplane.sessionstate import PySessionState
from meshrouter.mesh.actions import Close
from meshrouter.mesh.core import TRANSITIONS, Input
from meshrouter.proto.control import MessageType
from meshrouter.proto.wire import ROUTE
from meshrouter.testing.control import psk
from meshrouter.testing.fakes import MeshNet, address, name


def only_conn(net: MeshNet, i: int, j: int):  # type: ignore[no-untyped-def]
    return net.mesh(i).peers[name(j)]


def establish(net: MeshNet, *pairs: tuple[int, int]) -> None:
    for a, b in pairs:
        net.dial(a, b)
    for a, b in pairs:
        net.exchange_heartbeats(a, b)
    for _ in range(3):  # gossip is spaced (``spread``): a second or so to settle
        net.tick()


# -- the transition table ----------------------------------------------------------


def test_every_state_can_close_and_closed_is_final() -> None:
    for state, moves in TRANSITIONS.items():
        if state is ConnState.CLOSED:
            assert moves == {}
        else:
            assert moves[Input.CLOSE] is ConnState.CLOSED
    # Only a finished handshake leads out of HANDSHAKE, and only UDP moves between
    # PENDING and ESTABLISHED.
    assert TRANSITIONS[ConnState.HANDSHAKE][Input.HANDSHAKE_DONE] is ConnState.PENDING
    assert set(TRANSITIONS[ConnState.PENDING]) == {Input.UDP_UP, Input.CLOSE}
    assert set(TRANSITIONS[ConnState.ESTABLISHED]) == {Input.UDP_DOWN, Input.CLOSE}


def test_an_illegal_move_is_a_local_error() -> None:
    net = MeshNet(2)
    net.dial(1, 2)
    conn = only_conn(net, 1, 2)
    with pytest.raises(LocalProtocolError, match="handshake done"):
        net.mesh(1)._transition(conn, Input.HANDSHAKE_DONE)


# -- lifecycle ------------------------------------------------------------------------


def test_handshake_makes_a_pending_peer_with_a_published_link_and_gossip() -> None:
    net = MeshNet(2)
    ia, ib = net.dial(1, 2)
    m1, m2 = net.mesh(1), net.mesh(2)
    assert only_conn(net, 1, 2).state is ConnState.PENDING
    assert only_conn(net, 2, 1).state is ConnState.PENDING
    assert m1.links.by_index[ia].peer == name(2)
    assert m2.links.by_name[name(1)].index == ib
    assert m1.links.by_name[name(2)].session.peer_index == ib
    assert net.links_up == 2
    # Each knows the other's record, and lists the connection as not established.
    assert set(m1.gossip.records) == {name(1), name(2)}
    assert [c.established for c in m2.gossip.records[name(1)].connections] == [False]
    assert m1.status(net.now)["connections"][0]["state"] == "pending"


def test_udp_both_ways_establishes_and_its_loss_goes_back_to_pending() -> None:
    net = MeshNet(2)
    establish(net, (1, 2))
    m1 = net.mesh(1)
    assert only_conn(net, 1, 2).state is ConnState.ESTABLISHED
    assert m1.counters["connections_established"] == 1
    assert m1.links.routes.next_hop == {name(2): name(2)}
    assert net.mesh(2).gossip.records[name(1)].connections[0].established
    for _ in range(int(UDP_TIMEOUT / 0.5) + 1):
        net.tick()
    assert only_conn(net, 1, 2).state is ConnState.PENDING
    assert m1.links.routes.next_hop == {}


def test_duplicate_connections_keep_the_one_dialled_by_the_larger_name() -> None:
    net = MeshNet(2)
    net.mesh(1).maker.connect(address(2), net.now)
    [addr] = net.mesh(1).maker.dials_due(net.now)
    lost, _ = net.dial(1, 2, target=addr)  # dialled by name(1): loses
    kept, _ = net.dial(2, 1)  # dialled by name(2), the larger
    for i, j in ((1, 2), (2, 1)):
        assert len(net.mesh(i).conns) == 1
        assert net.mesh(i).peers[name(j)].state is ConnState.PENDING
    assert only_conn(net, 1, 2).index != lost
    assert only_conn(net, 2, 1).index == kept
    # The target moved to the surviving connection: connected, not retried.
    t = net.mesh(1).targets.get(addr)
    assert t is not None
    assert t.state is TargetState.CONNECTED
    assert only_conn(net, 1, 2).target == addr
    assert net.mesh(1).links.by_name[name(2)].index == only_conn(net, 1, 2).index
    assert len(net.mesh(1).links) == 1


def test_a_restarted_peer_replaces_its_old_connection() -> None:
    net = MeshNet(2)
    net.dial(1, 2)
    old = only_conn(net, 2, 1)
    net.restart(1)  # same name, new uid
    net.dial(1, 2)
    new = only_conn(net, 2, 1)
    assert new is not old
    assert old.state is ConnState.CLOSED
    assert old.control.close_reason == "peer restarted; replaced by new connection"


def test_wrong_password_makes_no_peer_and_counts_a_handshake_failure() -> None:
    net = MeshNet(2)
    net.restart(2, password=b"other")
    net.dial(1, 2)
    for i in (1, 2):
        assert net.mesh(i).peers == {}
        assert net.mesh(i).conns == {}
        assert len(net.mesh(i).links) == 0
    assert (
        net.mesh(1).counters["handshake_failures"] + net.mesh(2).counters["handshake_failures"] >= 1
    )


def test_rekey_closes_the_connection_when_nonces_run_low() -> None:
    net = MeshNet(2)
    net.dial(1, 2)
    session = net.mesh(1).links.by_name[name(2)].session
    state = session.state = PySessionState()  # a state whose counter may be set
    state.counter = REKEY_AFTER_MESSAGES
    net.tick()
    assert net.mesh(1).counters["rekeys"] == 1
    assert net.mesh(1).peers == {}
    assert net.mesh(2).peers == {}


def test_conn_limit_refuses_inbound_and_holds_back_dials() -> None:
    net = MeshNet(3)
    m1 = net.mesh(1)
    m1.conn_limit = 1
    net.dial(2, 1)
    assert (
        m1.open_connection(
            initiator=False, remote=("198.18.0.3", 4000), now=net.now, ephemeral=bytes(32)
        )
        is None
    )
    assert m1.counters["connections_refused_limit"] == 1
    m1.maker.connect(address(3), net.now)
    assert m1.maker.dials_due(net.now) == []
    t = m1.targets.get(address(3))
    assert t is not None
    assert t.last_error == "at the connection limit (--conn-limit)"


def test_forget_closes_the_targets_connection() -> None:
    net = MeshNet(2)
    addr = net.mesh(1).maker.connect(address(2), net.now)
    assert net.mesh(1).maker.dials_due(net.now) == [addr]
    net.dial(1, 2, target=addr)
    assert net.mesh(1).maker.forget(addr, net.now) == addr
    net.pump()
    assert net.mesh(1).peers == {}
    assert net.mesh(2).peers == {}
    assert net.mesh(1).maker.forget(addr, net.now) is None


def test_a_forgotten_address_is_not_dialled_again_when_gossip_names_it() -> None:
    net = MeshNet(2)
    net.mesh(2).advertise([address(2)])  # peer 2's own record says where it listens
    addr = net.mesh(1).maker.connect(address(2), net.now)
    net.dial(1, 2, target=addr)
    net.exchange_heartbeats(1, 2)
    net.tick()
    assert address(2) in net.mesh(1).gossip.addresses_of(name(2))
    assert net.mesh(1).maker.forget(addr, net.now) == addr
    net.pump()
    net.tick()
    assert name(2) in net.mesh(1).gossip.records  # its record is still known...
    assert net.mesh(1).maker.dials_due(net.now + 60) == []  # ...but not dialled
    assert net.mesh(1).targets.get(addr) is None
    net.mesh(1).maker.connect(address(2), net.now)  # the operator's word, again
    assert net.mesh(1).maker.dials_due(net.now) == [addr]


def test_dial_failures_back_off_with_jitter() -> None:
    net = MeshNet(1)
    m = net.mesh(1)
    addr = m.maker.connect(address(9), 0.0)
    assert m.maker.dials_due(0.0) == [addr]
    m.maker.dial_failed(addr, "connection refused", 0.0)
    assert 0.25 <= m.maker.next_dial_at() <= 0.75  # 0.5 s x jitter in [0.5, 1.5)
    assert m.maker.dials_due(0.1) == []


def test_discovery_dials_peers_learnt_from_gossip_the_larger_name_first() -> None:
    net = MeshNet(3)
    establish(net, (1, 2), (2, 3))
    assert name(3) > name(1)
    net.tick(1.0)
    # 3 dials within a second; 1 waits for it (3 to 9 s) before it would dial.
    assert net.mesh(1).maker.dials_due(net.now) == []
    due = net.mesh(3).maker.dials_due(net.now)
    assert due == [address(1)]
    net.dial(3, 1, target=due[0])
    net.exchange_heartbeats(1, 3)
    for _ in range(3):
        net.tick()
    assert set(net.mesh(1).peers) == {name(2), name(3)}
    assert net.mesh(1).links.routes.next_hop == {name(2): name(2), name(3): name(3)}
    net.tick(20.0)
    assert net.mesh(1).maker.dials_due(net.now) == []  # connected: its own dial never came


def test_the_smaller_name_dials_after_all_when_no_connection_comes() -> None:
    net = MeshNet(3)
    establish(net, (1, 2), (2, 3))
    net.tick(2.0)
    assert net.mesh(1).maker.dials_due(net.now) == []
    net.tick(8.0)  # 3 could not reach 1 (a firewall, say): 1 tries itself
    assert net.mesh(1).maker.dials_due(net.now) == [address(3)]


def test_the_smaller_name_waits_while_the_larger_ones_handshake_is_under_way() -> None:
    """On a starved CPU 3's handshake can outlast 1's wait: 1 does not dial
    into it (a duplicate to close), and dials after all if it fails."""
    net = MeshNet(3)
    establish(net, (1, 2), (2, 3))
    net.tick(12.0)  # 1's own dial of 3 is due now (3 to 9 s)
    m1 = net.mesh(1)
    inbound = m1.open_connection(
        initiator=False,
        remote=("::ffff:" + net.nodes[2].host, 40003),
        now=net.now,
        ephemeral=bytes(32),
    )
    assert inbound is not None
    assert m1.maker.dials_due(net.now) == []
    assert m1.targets.get(address(3)) is not None
    assert m1.targets.get(address(3)).attempts == 0  # type: ignore[union-attr]
    m1.close_connection(m1.conns[inbound], "handshake timed out", net.now)
    net.pump()
    net.tick(4.0)
    assert m1.maker.dials_due(net.now) == [address(3)]


def test_addresses_in_a_peers_record_that_do_not_parse_are_never_targets() -> None:
    """A record may name any text as an address: none of it becomes a target
    to dial or compare (it used to reach the dialler, and the maker's parse)."""
    from meshrouter.mesh.topology import ConnInfo, PeerRecord

    m = MeshNet(1).mesh(1)
    x, y = bytes([2, 0, 0, 0, 0, 9]), bytes([2, 0, 0, 0, 0, 8])
    bad = ["bad host:1", "nocolon", "[::1", "a:b:c", ":", "[]:x", "198.18.0.9"]
    good = "198.18.0.9:6783"
    conns = tuple(sorted(ConnInfo(x, a, True, False) for a in [*bad, good]))
    m.gossip.records[y] = PeerRecord(y, 1, 1, "y", conns)
    m.gossip.records[x] = PeerRecord(x, 1, 1, "x", ())
    m.maker.sync_discovered(0.0)
    assert [t.address for t in m.targets] == [good]
    assert m.maker.dials_due(100.0) == [good]


def test_a_router_that_learns_of_many_peers_dials_a_few_at_a_time() -> None:
    from meshrouter.mesh.maker import MAX_DIALING

    m = MeshNet(1).mesh(1)
    for i in range(20):
        m.maker.connect(f"198.51.100.{i}:6783", 0.0)
    first = m.maker.dials_due(0.0)
    assert len(first) == MAX_DIALING
    assert m.maker.dials_due(0.0) == []  # all slots busy
    for addr in first[:3]:
        m.maker.dial_failed(addr, "refused", 0.0)
    assert len(m.maker.dials_due(0.0)) == 3


def test_a_peer_advertises_every_address_and_others_dial_them_without_a_route() -> None:
    net = MeshNet(3)
    establish(net, (1, 2), (2, 3))
    net.mesh(3).advertise(["[2001:db8::3]:6783", "198.18.0.3:6783"])
    net.pump()
    for _ in range(3):  # 3 tells 2 at its tick; 2 passes it on (gossip is spaced: spread)
        net.tick()
    # An entry to itself is no edge: the route to 3 still goes through 2.
    assert net.mesh(1).links.routes.next_hop[name(3)] == name(2)
    # 1 is the smaller name: it dials after a while, one address at a time.
    assert net.mesh(1).targets.get("[2001:db8::3]:6783") is not None
    assert net.mesh(1).targets.get(address(3)) is not None
    net.now += 30.0
    due = set(net.mesh(1).maker.dials_due(net.now))
    assert due == {address(3), "[2001:db8::3]:6783"}  # what h2 saw, and what h3 said
    # Saying the same again changes nothing; a new set replaces the old.
    version = net.mesh(3).gossip.own.version
    net.mesh(3).advertise(["198.18.0.3:6783", "[2001:db8::3]:6783"])
    assert net.mesh(3).gossip.own.version == version
    net.mesh(3).advertise(["198.18.0.3:6783"])
    for _ in range(3):
        net.tick()
    assert "[2001:db8::3]:6783" not in net.mesh(1).gossip.addresses_of(name(3))


# -- IPAM over the mesh ---------------------------------------------------------------


def send_ipam(net: MeshNet, i: int, to: bytes, payload: bytes) -> bool:
    """IPAM at node ``i`` sends ``payload`` to ``to``; whether the mesh could."""
    unsent = net.mesh(i).counters["ipam_unsent"]
    net.fake_ipam(i).send(to, payload)
    net.mesh(i).flush()
    return net.mesh(i).counters["ipam_unsent"] == unsent


def test_ipam_reaches_a_peer_without_a_direct_connection_through_a_relay() -> None:
    net = MeshNet(3, ipam="fake")
    establish(net, (1, 2), (2, 3))
    assert send_ipam(net, 1, name(3), b"claim") is True
    net.pump()
    assert net.fake_ipam(3).received == [(name(1), b"claim")]
    assert net.mesh(2).counters["ipam_relayed"] == 1
    # Directly connected: no relay.
    assert send_ipam(net, 1, name(2), b"direct") is True
    net.pump()
    assert net.fake_ipam(2).received == [(name(1), b"direct")]
    # Unreachable: not sent.
    assert send_ipam(net, 1, name(9), b"x") is False


def test_a_relayed_ipam_message_out_of_hops_is_dropped() -> None:
    net = MeshNet(3, ipam="fake")
    establish(net, (1, 2), (2, 3))
    conn = only_conn(net, 1, 2)
    conn.control.send_message(MessageType.IPAM_RELAYED, ROUTE.pack(name(1), name(3), 0) + b"x")
    net.pump()
    assert net.mesh(2).counters["ipam_relay_dropped"] == 1
    assert net.fake_ipam(3).received == []


def test_bad_ipam_closes_a_direct_connection_but_not_a_relaying_one() -> None:
    net = MeshNet(3, ipam="fake")
    establish(net, (1, 2), (2, 3))
    net.fake_ipam(3).bad.add(b"poison")
    send_ipam(net, 1, name(3), b"poison")  # relayed by 2: 2 is not to blame
    net.pump()
    assert net.mesh(3).counters["ipam_errors"] == 1
    assert name(2) in net.mesh(3).peers
    send_ipam(net, 2, name(3), b"poison")  # direct: the sender broke the protocol
    net.pump()
    assert name(2) not in net.mesh(3).peers
    assert net.mesh(3).counters["ipam_errors"] == 2


def test_a_new_peer_gets_the_ring() -> None:
    net = MeshNet(2, ipam="fake")
    net.fake_ipam(1).ring = b"ring!"
    net.dial(1, 2)
    assert (name(1), b"ring!") in net.fake_ipam(2).received


# -- DNS over the mesh -------------------------------------------------------------------

WEB = "web.mesh.local."


def names_at(net: MeshNet, i: int) -> list[int]:
    return sorted(e.addr for e in net.dns(i).records.lookup(WEB))


def test_dns_entries_spread_through_a_relay_and_tombstones_follow() -> None:
    net = MeshNet(3)
    establish(net, (1, 2), (2, 3))
    assert net.dns(1).add("c1", [WEB], [11], net.now) == 1
    assert net.dns(1).add("c1", [WEB], [11], net.now) == 0  # already there
    net.dns(3).add("c3", [WEB], [33], net.now)
    net.pump()
    assert names_at(net, 1) == names_at(net, 2) == names_at(net, 3) == [11, 33]
    assert net.dns(1).remove("c1", net.now) == 1
    net.pump()
    assert names_at(net, 1) == names_at(net, 2) == names_at(net, 3) == [33]


def test_a_new_peer_gets_every_entry_and_a_partition_heals_to_one_view() -> None:
    net = MeshNet(3)
    establish(net, (1, 2))
    net.dns(1).add("c1", [WEB], [11], net.now)
    net.dns(3).add("c3", [WEB], [33], net.now)  # alone, for now
    net.pump()
    net.dns(1).remove("c1", net.now)  # a tombstone 3 never saw the entry of
    net.pump()
    establish(net, (2, 3))
    assert names_at(net, 1) == names_at(net, 2) == names_at(net, 3) == [33]
    assert {e.key: e for e in net.dns(3).records.all()} == net.dns(1).records.entries


def test_bad_dns_gossip_closes_the_connection() -> None:
    net = MeshNet(2)
    establish(net, (1, 2))
    only_conn(net, 1, 2).control.send_message(MessageType.DNS, b"\x01\x00\x05junk")
    net.pump()
    assert name(1) not in net.mesh(2).peers
    assert net.mesh(2).counters["dns_gossip_errors"] == 1


def test_the_entries_of_a_forgotten_peer_are_dropped() -> None:
    net = MeshNet(2)
    establish(net, (1, 2))
    net.dns(2).add("c2", [WEB], [22], net.now)
    net.pump()
    assert names_at(net, 1) == [22]
    net.restart(2)  # gone without a word; never comes back
    for _ in range(int((net.mesh(1).gossip.gc_after + 30) / 0.5)):
        net.tick()
    assert name(2) not in net.mesh(1).gossip.records
    assert names_at(net, 1) == []


# -- clocks and versions ------------------------------------------------------------------


def test_peers_learn_each_others_clock_skew_and_version() -> None:
    net = MeshNet(2)
    net.mesh(1).version, net.mesh(2).version = "0.1.0", "0.2.0"
    net.mesh(1).tick(net.now, wall=1_000_000.0)
    net.mesh(2).tick(net.now, wall=1_000_007.5)  # 7.5 s ahead
    net.dial(1, 2)
    c12 = {c["nickname"]: c for c in net.mesh(1).status(net.now)["connections"]}["host2"]
    c21 = {c["nickname"]: c for c in net.mesh(2).status(net.now)["connections"]}["host1"]
    assert c12["clock_skew"] == 7.5
    assert c21["clock_skew"] == -7.5
    assert (c12["peer_version"], c21["peer_version"]) == ("0.2.0", "0.1.0")
    only_conn(net, 1, 2).control.send_message(MessageType.CLOCK, b"\x7f\xf8" + bytes(6))  # NaN
    net.pump()
    assert net.mesh(2).counters["control_messages_bad"] == 1
    assert name(1) in net.mesh(2).peers  # counted, not fatal


# -- rmpeer -----------------------------------------------------------------------------


def test_rmpeer_resolves_names_and_refuses_what_it_must() -> None:
    net = MeshNet(3, ipam="fake")
    establish(net, (1, 2))

    def rmpeer(who: str) -> str:
        return commands.rmpeer(net.mesh(1), net.fake_ipam(1), net.dns(1), who)

    with pytest.raises(OperatorError, match="no peer named 'ghost'"):
        rmpeer("ghost")
    with pytest.raises(OperatorError, match="this peer"):
        rmpeer("host1")
    with pytest.raises(OperatorError, match="is connected"):
        rmpeer("host2")
    # A peer only IPAM remembers (gone from the topology) is found by its name.
    net.fake_ipam(1).owner_names.add(name(7))
    assert rmpeer("02:00:00:00:00:07") == "1 range(s) of 02:00:00:00:00:07 reclaimed"
    assert net.fake_ipam(1).removed == [name(7)]


def test_close_all_closes_every_connection_with_the_reason() -> None:
    net = MeshNet(3)
    establish(net, (1, 2), (1, 3))
    m1 = net.mesh(1)
    m1.close_all("router shutting down", net.now)
    actions = m1.take_actions()
    assert sorted(a.index for a in actions if isinstance(a, Close)) == sorted(m1.conns)
    assert m1.peers == {}
    assert len(m1.links) == 0


def test_a_thousand_connects_and_closes_from_one_address_log_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 14, quiet logs: connections closed before their handshake are
    rate-limited per address like every other complaint about remote input."""
    net = MeshNet(1)
    m = net.mesh(1)
    caplog.set_level(logging.DEBUG, logger="meshrouter")
    for k in range(1000):
        index = m.open_connection(
            initiator=False, remote=("198.18.0.66", 30000 + k), now=net.now, ephemeral=bytes(32)
        )
        assert index is not None
        m.receive_eof(index, net.now)
        m.connection_lost(index, net.now)
        net.now += 0.01  # 10 s in all
    lines = [r for r in caplog.records if "198.18.0.66" in r.getMessage()]
    assert len(lines) == 1
    assert "closed before the handshake" in lines[0].getMessage()
    assert m.counters["connections_closed"] == 1000
    assert m.conns == {}
    # A minute later the next one is logged, saying how many were held back.
    net.now += 61
    index = m.open_connection(
        initiator=False, remote=("198.18.0.66", 40000), now=net.now, ephemeral=bytes(32)
    )
    assert index is not None
    m.receive_eof(index, net.now)
    assert "999 more like it" in caplog.records[-1].getMessage()


# -- password rotation ---------------------------------------------------------------

NEW = psk(b"the new secret")


def test_a_rotation_spreads_and_every_connection_is_rekeyed_without_a_gap() -> None:
    net = MeshNet(3)
    for a, b in ((1, 2), (2, 3)):  # a line: 3 learns the key through 2
        net.mesh(a).targets.add(address(b), net.now)
        net.dial(a, b, target=address(b))
        net.exchange_heartbeats(a, b)
    net.tick()
    assert net.mesh(1).rotate(NEW, net.now, 600.0) == 1
    net.pump()
    for i in (1, 2, 3):
        assert net.mesh(i).keys.epoch == 1
        assert net.mesh(i).keys.current == NEW
        assert net.mesh(i).keys.in_window()
    # The dialling side dials again beside each connection (make before break):
    # the replacement takes over at once, established, and the old one goes.
    for _ in range(4):
        net.tick()
        for i, j in ((1, 2), (2, 1), (2, 3), (3, 2)):
            conn = only_conn(net, i, j)  # never a moment without the peer
            assert conn.state is ConnState.ESTABLISHED
    for i, j in ((1, 2), (2, 1), (2, 3), (3, 2)):
        assert only_conn(net, i, j).key_epoch == 1
    assert net.mesh(1).counters["rekeys_rotation"] == 1
    assert net.mesh(2).counters["rekeys_rotation"] == 1
    assert only_conn(net, 1, 2).target == address(2)  # handed to the replacement
    target = net.mesh(1).targets.get(address(2))
    assert target is not None
    assert target.state is TargetState.CONNECTED  # not "failed" by the old one's close
    net.tick()
    assert net.mesh(1).counters["rekeys_rotation"] == 1  # done: no churn


def test_after_the_window_the_old_password_is_refused_with_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    net = MeshNet(3)
    establish(net, (1, 2))
    net.mesh(1).rotate(NEW, net.now, 60.0)
    net.pump()
    net.tick(61.0)  # the window ends: the old key is retired on both
    assert not net.mesh(1).keys.in_window()
    assert net.mesh(1).peers == {}  # the connection under the old key went
    # A peer that was away and knows only the old password is told why.
    caplog.clear()
    net.dial(3, 1)
    assert net.mesh(3).peers == {}
    assert net.mesh(3).counters["handshake_failures"] == 1
    told = [r.getMessage() for r in caplog.records if "host3" not in r.getMessage()]
    assert any("mesh password was rotated" in m and "new password file" in m for m in told)
    # ... one with the new password file joins.
    net.restart(3, password=b"the new secret")
    net.dial(3, 1)
    assert name(1) in net.mesh(3).peers
    assert only_conn(net, 3, 1).key_epoch == net.mesh(3).keys.epoch_of(NEW)


def test_a_partition_during_the_window_heals_without_a_split() -> None:
    net = MeshNet(3)
    establish(net, (1, 2))  # 3 is cut off while the password changes
    net.mesh(1).rotate(NEW, net.now, 600.0)
    net.pump()
    assert net.mesh(3).keys.epoch == 0
    net.tick(100.0)  # within the window the partition heals
    establish(net, (2, 3))  # 2 dials with the old key: 3 accepts it ...
    assert net.mesh(3).keys.epoch == 1  # ... and learns the new one
    for _ in range(4):
        net.tick()
    establish(net, (2, 3))
    assert only_conn(net, 2, 3).key_epoch == 1
    assert only_conn(net, 3, 2).key_epoch == 1


# -- partial meshes ---------------------------------------------------------------------


def drive(net: MeshNet, seconds: float) -> int:
    """Run the mesh as the shell would: ticks, every due dial made at once,
    UDP heard both ways on every link.  Returns how many dials a full peer
    refused."""
    hosts = {n.host: k for k, n in enumerate(net.nodes, 1)}
    refused = 0
    end = net.now + seconds
    while net.now < end:
        net.tick()
        for i in range(1, net.count + 1):
            for addr in net.mesh(i).maker.dials_due(net.now):
                j = hosts[addr.rsplit(":", 1)[0]]
                if len(net.mesh(j).conns) >= net.mesh(j).conn_limit:  # refused: it is full
                    net.mesh(i).maker.dial_failed(addr, "peer closed", net.now)
                    refused += 1
                else:
                    net.dial(i, j, target=addr)
        net.pump()
        for i in range(1, net.count + 1):
            for peer in list(net.mesh(i).peers):
                j = peer[-1]
                if i < j and name(i) in net.mesh(j).peers:
                    net.exchange_heartbeats(i, j)
    return refused


def test_under_a_connection_limit_the_mesh_is_a_connected_graph_of_bounded_degree() -> None:
    n, limit = 10, 3
    net = MeshNet(n)
    for i in range(1, n + 1):
        net.mesh(i).conn_limit = limit
        if i > 1:
            net.mesh(i).maker.connect(address(i - 1), net.now)  # launched as a line
    refused = drive(net, 90.0)
    edges = {tuple(sorted((i, p[-1]))) for i in range(1, n + 1) for p in net.mesh(i).peers}
    for i in range(1, n + 1):
        m = net.mesh(i)
        assert len(m.peers) <= limit
        assert m.gossip.reachable() == {name(k) for k in range(1, n + 1)}, i
    # Not just the line it was launched as: the discovered connections cut its length.
    line = {(i, i + 1) for i in range(1, n)}
    assert edges - line
    parents = bfs_parents(net.mesh(1).gossip.routes().graph, name(1))

    def hops(k: bytes) -> int:
        up = parents[k]
        return 0 if up is None else 1 + hops(up)

    assert max(hops(name(k)) for k in range(2, n + 1)) < n - 1
    # Each dials only the few it has room for: the full ones seldom refuse.
    assert refused <= 2, refused
    assert sum(m.mesh.counters["handshakes"] for m in net.nodes) <= 2 * len(edges) + n
