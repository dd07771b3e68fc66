"""The mesh core's part of the router's status (sans-IO): connections with
their data sessions' counters, connection targets, the peers of the
topology, the password's rotation state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from meshrouter.base.inputs import format_address
from meshrouter.base.names import format_name
from meshrouter.contract.status import (
    CertStatus,
    ConnectionStatus,
    ConnState,
    MeshStatus,
    NatStatus,
    PeerStatus,
    TargetState,
    TargetStatus,
)
from meshrouter.mesh.targets import Target
from meshrouter.mesh.topology import RELAY_NAMES
from meshrouter.proto.cert import Certificate
from meshrouter.proto.crypto import SUITES

if TYPE_CHECKING:
    from meshrouter.mesh.core import Mesh


def mesh_status(m: Mesh, now: float) -> MeshStatus:
    return {
        "name": m.name,
        "nickname": m.nickname,
        "uid": m.uid,
        "connections": list(_connection_status(m, now)),
        "targets": [_target_status(t, now) for t in m.targets],
        "peers": _peer_status(m),
        "counters": dict(m.counters),
        "gossip": {
            "bytes_sent": m.gossip.bytes_sent,
            "bytes_received": m.gossip.bytes_received,
        },
        "password": {
            "epoch": m.keys.epoch,
            "previous_accepted_for": (
                round(max(0.0, m.keys.window_ends - now), 1) if m.keys.in_window() else 0.0
            ),
            "peers_with_current": sum(m.keys.holders.get(n, 0) >= m.keys.epoch for n in m.peers),
        },
        "nat": nat_status(m, now),
        "certs": None
        if m.certs is None
        else {
            "cert": cert_status(m.certs.cert),
            "cas": [k.hex() for k in m.certs.trust.cas],
            "revoked": len(m.certs.trust.revoked),
            "evicted": sorted(format_name(n) for n in m.maker.evicted),
            "password_accepted": m.password,
        },
    }


def nat_status(m: Mesh, now: float = 0.0) -> NatStatus:
    return {
        "seen_udp": m.reflection.seen_udp(),
        "behind_nat": m.reflection.behind_nat(),
        "symmetric": m.reflection.symmetric(),
        "candidate": m.reflection.candidate(),
        "public": list(m.public),
        "punching": m.tunnels.states(now),
    }


def cert_status(c: Certificate) -> CertStatus:
    return {
        "name": c.nickname,
        "fingerprint": c.fingerprint.hex(),
        "expires": float(c.not_after),
        "not_before": float(c.not_before),
        "issuer": c.issuer.hex(),
        "ranges": list(c.ranges),
        "groups": list(c.groups),
    }


def _connection_status(m: Mesh, now: float) -> Iterator[ConnectionStatus]:
    for conn in list(m.peers.values()):
        res, link = conn.result, conn.link
        assert res is not None
        assert link is not None
        s = link.session
        yield {
            "peer": format_name(conn.name),
            "nickname": res.peer.nickname,
            "address": conn.where,
            "udp_address": format_address(*link.udp_addr) if link.udp_addr else None,
            "direction": "outbound" if conn.initiator else "inbound",
            "state": conn.state.value,
            "encrypted": True,
            "cipher": SUITES[res.keys.suite].name,
            "protocol_version": res.keys.version,
            "uptime": round(now - conn.connected_at, 1),
            "clock_skew": None if conn.clock_skew is None else round(conn.clock_skew, 3),
            "peer_version": conn.peer_version,
            "key_epoch": conn.key_epoch,
            "auth": "password" if res.cert is None else "certificate",
            "seen_as": {"tcp": conn.seen_as[0], "udp": conn.seen_as[1]},
            "cert": None if res.cert is None else cert_status(res.cert),
            "relay": None if conn.via is None else m.nickname_of(conn.via),
            "path": "sleeve",  # the daemon says which, with a fast path
            "datagram_size": s.datagram_size,
            "pmtu_confirmed": s.pmtu.confirmed,
            "tx_messages": s.state.tx_messages,
            "rx_messages": s.state.rx_messages,
            "reassembly_drops": s.reassembly_drops,
            "tx_packets": s.state.tx_packets,
            "rx_packets": s.state.rx_packets,
            "tx_frames": s.state.tx_frames,
            "rx_frames": s.state.rx_frames,
            "tx_bytes": s.state.tx_bytes,
            "rx_bytes": s.state.rx_bytes,
        }
    for conn in list(m.conns.values()):
        if conn.state is ConnState.HANDSHAKE:
            yield {
                "peer": None,
                "address": conn.where,
                "direction": "outbound" if conn.initiator else "inbound",
                "state": conn.state.value,
                "encrypted": False,
            }


def _target_status(t: Target, now: float) -> TargetStatus:
    return {
        "address": t.address,
        "state": t.state,
        "discovered": t.discovered,
        "peer": t.peer,
        "attempts": t.attempts,
        "last_error": t.last_error,
        "next_try_in": (
            round(max(0.0, t.next_try - now), 1) if t.state is TargetState.WAITING else None
        ),
    }


def _sealed(m: Mesh, name: bytes, hop: bytes | None) -> str:
    if hop is None or hop == name:
        return ""
    far = m.links.by_name.get(name)
    return "end to end" if far is not None and far.e2e else "by each hop"


def _peer_status(m: Mesh) -> list[PeerStatus]:
    routes = m.links.routes
    out: list[PeerStatus] = []
    for name, rec in sorted(m.gossip.records.items()):
        hop = routes.next_hop.get(name)
        out.append(
            {
                "peer": format_name(name),
                "nickname": rec.nickname,
                "uid": rec.uid,
                "version": rec.version,
                "reachable": name == m.me or hop is not None,
                "via": None if hop is None or hop == name else format_name(hop),
                "sealed": _sealed(m, name, hop),
                "relay": RELAY_NAMES[rec.relay_role()],
                "connections": [
                    {
                        "peer": format_name(c.peer),
                        "address": c.address,
                        "established": c.established,
                        "outbound": c.outbound,
                    }
                    for c in rec.connections
                ],
            }
        )
    return out
