"""Prometheus metrics in the text exposition format, served on a local port.

No client library: the format is a few lines of text, and the router already
counts everything in its status (``status.RouterStatus``).  Names (all prefixed ``mesh_``):

===================================  =======  =============================================
name                                 type     meaning
===================================  =======  =============================================
mesh_info{peer,nickname,version}     gauge    always 1; labels say who this is
mesh_connections{state}              gauge    connections by state (established, pending
                                              = no UDP both ways, handshake)
mesh_peers / mesh_peers_reachable    gauge    peers in the topology / reachable from here
mesh_frames_total{peer,direction}    counter  Ethernet frames sent (tx) and received (rx)
mesh_bytes_total{peer,direction}     counter  their bytes
mesh_datagrams_total{peer,direction} counter  UDP datagrams of the data plane
mesh_path_mtu_bytes{peer}            gauge    datagram size in use towards the peer
mesh_drops_total{reason}             counter  input dropped, by reason (bad packets,
                                              replays, authentication failures, ...)
mesh_events_total{event}             counter  connection events: established, closed,
                                              handshake_failures, relayed messages, ...
mesh_gossip_bytes_total{direction}   counter  topology gossip sent and received
mesh_macs                            gauge    MAC addresses learnt
mesh_ipam_addresses{state}           gauge    addresses this peer owns / has given out
mesh_dns_entries                     gauge    live DNS entries (mesh-wide view)
mesh_dns_queries_total               counter  DNS queries received (garbage included)
mesh_dns_answers_total{rcode}        counter  DNS answers made here, by rcode
mesh_dns_dropped_total               counter  DNS input that was not a query
mesh_dns_forwarded_total             counter  queries passed to the upstream resolvers
mesh_dns_upstream_failures_total     counter  forwarded queries no upstream answered
===================================  =======  =============================================

Counters of a connection start again from zero when it reconnects; Prometheus
treats that as a counter reset.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import trio

from .status import ConnectionStatus, ConnState, RouterStatus


def _esc(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: object) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items()) + "}"


def render(st: RouterStatus) -> str:
    lines: list[str] = []

    def metric(
        name: str, kind: str, help_: str, samples: list[tuple[dict[str, object], float]]
    ) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{_labels(**labels)} {value:g}")

    metric(
        "mesh_info",
        "gauge",
        "This router.",
        [({"peer": st["name"], "nickname": st["nickname"], "version": st["version"]}, 1)],
    )
    states = {s.value: 0 for s in (ConnState.ESTABLISHED, ConnState.PENDING, ConnState.HANDSHAKE)}
    for c in st["connections"]:
        if c["state"] in states:
            states[c["state"]] += 1
    metric(
        "mesh_connections",
        "gauge",
        "Control connections by state.",
        [({"state": k}, v) for k, v in states.items()],
    )
    metric(
        "mesh_peers", "gauge", "Peers in the topology, this one included.", [({}, len(st["peers"]))]
    )
    metric(
        "mesh_peers_reachable",
        "gauge",
        "Peers reachable over established connections.",
        [({}, sum(1 for p in st["peers"] if p["reachable"]))],
    )
    conns = [c for c in st["connections"] if c.get("peer")]
    per_direction: list[tuple[str, str, Callable[[ConnectionStatus], tuple[int, int]]]] = [
        (
            "mesh_frames_total",
            "Ethernet frames through the mesh.",
            lambda c: (c["tx_frames"], c["rx_frames"]),
        ),
        (
            "mesh_bytes_total",
            "Bytes of Ethernet frames through the mesh.",
            lambda c: (c["tx_bytes"], c["rx_bytes"]),
        ),
        (
            "mesh_datagrams_total",
            "UDP datagrams of the data plane.",
            lambda c: (c["tx_packets"], c["rx_packets"]),
        ),
    ]
    for name, help_, values in per_direction:
        samples: list[tuple[dict[str, object], float]] = []
        for c in conns:
            tx, rx = values(c)
            samples.append(({"peer": c["nickname"], "direction": "tx"}, tx))
            samples.append(({"peer": c["nickname"], "direction": "rx"}, rx))
        metric(name, "counter", help_, samples)
    metric(
        "mesh_path_mtu_bytes",
        "gauge",
        "Datagram size in use towards each peer.",
        [({"peer": c["nickname"]}, c["datagram_size"]) for c in conns],
    )
    metric(
        "mesh_drops_total",
        "counter",
        "Input dropped, by reason.",
        [({"reason": k}, v) for k, v in sorted(st["drops"].items())],
    )
    metric(
        "mesh_events_total",
        "counter",
        "Connection and routing events.",
        [({"event": k}, v) for k, v in sorted(st["counters"].items())],
    )
    metric(
        "mesh_gossip_bytes_total",
        "counter",
        "Topology gossip bytes.",
        [
            ({"direction": "tx"}, st["gossip"]["bytes_sent"]),
            ({"direction": "rx"}, st["gossip"]["bytes_received"]),
        ],
    )
    metric("mesh_macs", "gauge", "MAC addresses learnt.", [({}, st["macs"])])
    mine = [s for s in st["ipam"]["shares"] if s["peer"] == st["name"]]
    owned = mine[0]["owned"] if mine else 0
    metric(
        "mesh_ipam_addresses",
        "gauge",
        "Addresses of this peer's share.",
        [({"state": "owned"}, owned), ({"state": "used"}, len(st["ipam"]["allocations"]))],
    )
    dns = st["dns"]
    if dns["enabled"]:
        dc = dns["counters"]
        metric("mesh_dns_entries", "gauge", "Live DNS entries.", [({}, len(dns["entries"]))])
        metric("mesh_dns_queries_total", "counter", "DNS queries.", [({}, dc.get("queries", 0))])
        metric(
            "mesh_dns_answers_total",
            "counter",
            "DNS answers made here, by rcode.",
            [
                ({"rcode": k.removeprefix("rcode_")}, v)
                for k, v in sorted(dc.items())
                if k.startswith("rcode_")
            ],
        )
        for name, key, help_ in (
            ("mesh_dns_dropped_total", "dropped", "DNS input that was not a query."),
            ("mesh_dns_forwarded_total", "forwarded", "DNS queries forwarded upstream."),
            (
                "mesh_dns_upstream_failures_total",
                "upstream_failures",
                "Forwarded queries no upstream answered.",
            ),
        ):
            metric(name, "counter", help_, [({}, dc.get(key, 0))])
    return "\n".join(lines) + "\n"


async def serve(
    status: Callable[[], RouterStatus],
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A minimal HTTP server: GET /metrics returns ``render(status())``."""

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            with trio.move_on_after(5):
                while b"\r\n\r\n" not in data and len(data) < 8192:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    data += chunk
            first = data.split(b"\r\n", 1)[0].split()
            if len(first) >= 2 and first[0] == b"GET" and first[1].split(b"?")[0] == b"/metrics":
                body = render(status()).encode()
                head = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            else:
                body = b"try /metrics\n"
                head = b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(head + body)

    listeners = await trio.open_tcp_listeners(port, host=host)
    await trio.serve_listeners(handler, listeners, task_status=task_status)
