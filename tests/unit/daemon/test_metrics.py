"""Prometheus rendering of a status, by machine-readable state (no display text)."""

from __future__ import annotations

import re
from typing import cast

from meshrouter.contract.status import ConnectionStatus, RouterStatus
from meshrouter.daemon.metrics import render


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
            "drops": {"auth_failed": 3},
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
    # Peers by their unique name, the nickname (which need not be unique) beside it.
    h2 = 'peer="02:00:00:00:00:02",nickname="h2"'
    assert sample(text, f'mesh_frames_total{{{h2},direction="tx"}}') == 5
    assert sample(text, f'mesh_bytes_total{{{h2},direction="rx"}}') == 700
    # A connection still in its handshake has no traffic to show.
    assert text.count(f'mesh_frames_total{{{h2},direction="tx"}}') == 2


def test_the_rest_of_the_status_and_label_escaping() -> None:
    text = render(status())
    assert 'mesh_info{peer="02:00:00:00:00:01",nickname="h\\"1",version="0.1.0"} 1' in text
    assert sample(text, "mesh_peers") == 2
    assert sample(text, "mesh_peers_reachable") == 1
    assert sample(text, 'mesh_drops_total{reason="auth_failed"}') == 3
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


def test_values_are_exact_and_labels_a_fixed_set() -> None:
    """Large counters in full (never 1.34498e+06); drop reasons outside the
    fixed set, byte counts and data-plane work never become events."""
    st = status(conn("established", tx_bytes=1_344_981_234_567))
    st["drops"] = {"auth_failed": 1, "unknown datagram type 63": 5}
    st["counters"] = {
        "connections_established": 3,
        "gossip_bytes_sent": 999,
        "frames_sent": 12_345_678,
        "internal error in udp receive: KeyError": 2,
        "Weird Key!": 1,
    }
    st["version"] = "0.2.0"
    st["protocol"] = "1"
    st["dataplane"] = "c"
    st["start_time"] = 1764625277.25
    text = render(st, {"process_open_fds": 12, "process_cpu_seconds_total": 1.5})
    assert 'direction="tx"} 1344981234567\n' in text
    assert sample(text, 'mesh_drops_total{reason="auth_failed"}') == 1
    assert sample(text, 'mesh_drops_total{reason="other"}') == 5
    assert "type 63" not in text
    assert 'mesh_dataplane_total{counter="frames_sent"} 12345678\n' in text
    assert 'mesh_internal_errors_total{where="udp_receive"} 2\n' in text
    assert sample(text, 'mesh_events_total{event="other"}') == 1
    events = re.findall(r'^mesh_events_total\{event="([^"]+)"\}', text, re.M)
    assert sorted(events) == ["connections_established", "other"]
    assert "mesh_start_time_seconds 1764625277.25\n" in text
    assert re.search(
        r'^mesh_build_info\{version="0.2.0",protocol="1",dataplane="c",python="3', text, re.M
    )
    assert "process_open_fds 12\n" in text
    assert "# TYPE process_cpu_seconds_total counter" in text
    for name in re.findall(r"^# TYPE (\S+) ", text, re.M):
        assert f"# HELP {name} " in text


def test_process_figures_are_read_from_proc() -> None:
    from meshrouter.daemon.metrics import process_stats

    p = process_stats()
    assert p["process_open_fds"] >= 3
    assert p["process_resident_memory_bytes"] > 1 << 20
    assert p["process_threads"] >= 1
    assert 1.5e9 < p["process_start_time_seconds"] < 4e9
