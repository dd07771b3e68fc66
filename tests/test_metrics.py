"""Prometheus rendering of a status, by machine-readable state (no display text)."""

from __future__ import annotations

import re
from typing import cast

from meshrouter.metrics import render
from meshrouter.status import ConnectionStatus, RouterStatus


def conn(state: str, peer: str | None = "02:00:00:00:00:02", **kw: int) -> ConnectionStatus:
    c: dict[str, object] = {"state": state, "peer": peer, "nickname": "h2"}
    for key in ("frames", "bytes", "packets"):
        c[f"tx_{key}"] = kw.get(f"tx_{key}", 0)
        c[f"rx_{key}"] = kw.get(f"rx_{key}", 0)
    c["datagram_size"] = 1472
    return cast(ConnectionStatus, c)


def status(*conns: ConnectionStatus) -> RouterStatus:
    return cast(
        RouterStatus,
        {
            "name": "02:00:00:00:00:01",
            "nickname": 'h"1',
            "version": "0.1.0",
            "connections": list(conns),
            "peers": [{"reachable": True}, {"reachable": False}],
            "drops": {"authentication failed": 3},
            "counters": {"connections_established": 2},
            "gossip": {"bytes_sent": 10, "bytes_received": 20},
            "macs": 4,
            "ipam": {
                "shares": [{"peer": "02:00:00:00:00:01", "owned": 100}],
                "allocations": [{}, {}],
            },
            "dns": {
                "enabled": True,
                "entries": [{}, {}, {}],
                "counters": {"queries": 9, "rcode_NOERROR": 7, "rcode_NXDOMAIN": 1, "dropped": 1},
            },
        },
    )


def sample(text: str, line: str) -> float:
    m = re.search("^" + re.escape(line) + r" (\S+)$", text, re.M)
    assert m, line
    return float(m.group(1))


def test_connections_are_counted_by_state() -> None:
    text = render(
        status(
            conn("established", tx_frames=5, rx_bytes=700),
            conn("pending"),
            conn("handshake", peer=None),
        )
    )
    assert sample(text, 'mesh_connections{state="established"}') == 1
    assert sample(text, 'mesh_connections{state="pending"}') == 1
    assert sample(text, 'mesh_connections{state="handshake"}') == 1
    assert sample(text, 'mesh_frames_total{peer="h2",direction="tx"}') == 5
    assert sample(text, 'mesh_bytes_total{peer="h2",direction="rx"}') == 700
    # A connection still in its handshake has no traffic to show.
    assert text.count('mesh_frames_total{peer="h2",direction="tx"}') == 2


def test_the_rest_of_the_status_and_label_escaping() -> None:
    text = render(status())
    assert 'mesh_info{peer="02:00:00:00:00:01",nickname="h\\"1",version="0.1.0"} 1' in text
    assert sample(text, "mesh_peers") == 2
    assert sample(text, "mesh_peers_reachable") == 1
    assert sample(text, 'mesh_drops_total{reason="authentication failed"}') == 3
    assert sample(text, 'mesh_events_total{event="connections_established"}') == 2
    assert sample(text, 'mesh_ipam_addresses{state="owned"}') == 100
    assert sample(text, 'mesh_ipam_addresses{state="used"}') == 2
    assert sample(text, "mesh_dns_entries") == 3
    assert sample(text, "mesh_dns_queries_total") == 9
    assert sample(text, 'mesh_dns_answers_total{rcode="NXDOMAIN"}') == 1
    assert sample(text, "mesh_dns_dropped_total") == 1
    assert sample(text, "mesh_dns_upstream_failures_total") == 0
    for name in re.findall(r"^# TYPE (\S+) ", text, re.M):
        assert f"# HELP {name} " in text
