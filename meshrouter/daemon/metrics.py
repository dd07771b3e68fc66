"""Prometheus metrics in the text exposition format, served on a local port.

No client library: the format is a few lines of text, and the router already
counts everything in its status (``status.RouterStatus``).  Values are exact
integers (never ``1.3e+06``: ``rate()`` needs every digit).  Every label value
comes from a fixed set or from the mesh's own names: nothing a packet carries
becomes a series.  Names (all prefixed ``mesh_``, and the standard ``process_``):

=========================================  =======  ========================================
name                                       type     meaning
=========================================  =======  ========================================
mesh_info{peer,nickname,version}           gauge    always 1; labels say who this is
mesh_build_info{version,protocol,          gauge    always 1; what runs: the protocol
  dataplane,python}                                 versions, the data-plane loop, Python
mesh_start_time_seconds                    gauge    when the router started (Unix time)
mesh_connections{state}                    gauge    connections by state (established, pending
                                                    = no UDP both ways, handshake)
mesh_peers / mesh_peers_reachable          gauge    peers in the topology / reachable from here
mesh_frames_total{peer,nickname,direction} counter  Ethernet frames sent (tx) and received (rx);
                                                    ``peer`` is the unique peer name
mesh_bytes_total{peer,nickname,direction}  counter  their bytes
mesh_datagrams_total{peer,nickname,...}    counter  UDP datagrams of the data plane
mesh_path_mtu_bytes{peer,nickname}         gauge    datagram size in use towards the peer
mesh_drops_total{reason}                   counter  input dropped, by reason: the fixed set
                                                    ``link.DROP_REASONS``
mesh_dataplane_total{counter}              counter  the data plane's work: frames sent and
                                                    messages delivered in C, frames and
                                                    datagrams handed to Python, GSO sends
mesh_events_total{event}                   counter  connection and routing events: established,
                                                    closed, handshake failures, relayed
                                                    messages, errors at a server (api_errors) ...
mesh_internal_errors_total{where}          counter  bugs caught on the data path (logged once)
mesh_gossip_bytes_total{direction}         counter  topology gossip sent and received
mesh_macs                                  gauge    MAC addresses learnt
mesh_ipam_addresses{state}                 gauge    addresses this peer owns / has given out
mesh_dns_entries                           gauge    live DNS entries (mesh-wide view)
mesh_dns_queries_total                     counter  DNS queries received (garbage included)
mesh_dns_answers_total{rcode}              counter  DNS answers made here, by rcode
mesh_dns_dropped_total                     counter  DNS input that was not a query
mesh_dns_forwarded_total                   counter  queries passed to the upstream resolvers
mesh_dns_upstream_failures_total           counter  forwarded queries no upstream answered
process_cpu_seconds_total                  counter  the router process's CPU time
process_resident_memory_bytes              gauge    its resident memory
process_virtual_memory_bytes               gauge    its virtual memory
process_open_fds / process_max_fds         gauge    its open file descriptors, and the limit
process_threads                            gauge    its threads
process_start_time_seconds                 gauge    when it started (Unix time)
=========================================  =======  ========================================

Counters of a connection start again from zero when it reconnects; Prometheus
treats that as a counter reset.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import resource
from collections.abc import Callable

import trio

from meshrouter.base.boundary import Boundary
from meshrouter.contract.status import ConnectionStatus, ConnState, RouterStatus
from meshrouter.dataplane.link import DROP_REASONS, INTERNAL_ERROR


def _esc(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: object) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items()) + "}"


# The data plane's counts of work (not events): their own metric.
DATAPLANE_COUNTERS = frozenset(
    {
        "frames_sent",
        "messages_delivered",
        "frames_to_python",
        "datagrams_to_python",
        "gso_sends",
        "superframes_cut",
        "segments_sealed",
        "superframes_joined",
        "segments_joined",
    }
)
_EVENT = re.compile(r"[a-z][a-z0-9_]*\Z")


def _value(value: float) -> str:
    """Exact: integers in full, floats as Python writes them back exactly."""
    if isinstance(value, bool):
        return str(int(value))
    return str(value) if isinstance(value, int) else repr(float(value))


def _events(counters: dict[str, int]) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """The status counters split into (events, data-plane work, internal
    errors by where).  Byte counts have metrics of their own; a key that is no
    snake_case name is counted as the event "other"."""
    events: dict[str, int] = {}
    work: dict[str, int] = {}
    internal: dict[str, int] = {}
    for key, n in counters.items():
        if key in DATAPLANE_COUNTERS:
            work[key] = n
        elif key.startswith(INTERNAL_ERROR):
            where = key[len(INTERNAL_ERROR) :].split(":")[0].strip().replace(" ", "_")
            where = where if _EVENT.match(where) else "other"
            internal[where] = internal.get(where, 0) + n
        elif "bytes" in key:
            continue  # gossip bytes: mesh_gossip_bytes_total
        else:
            name = key if _EVENT.match(key) else "other"
            events[name] = events.get(name, 0) + n
    return events, work, internal


def process_stats() -> dict[str, float]:
    """The standard process_* figures of this process, from /proc (Linux)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        page = os.sysconf("SC_PAGE_SIZE")
        out["process_cpu_seconds_total"] = (int(fields[11]) + int(fields[12])) / ticks
        out["process_threads"] = int(fields[17])
        out["process_virtual_memory_bytes"] = int(fields[20])
        out["process_resident_memory_bytes"] = int(fields[21]) * page
        with open("/proc/stat") as f:
            btime = next(int(ln.split()[1]) for ln in f if ln.startswith("btime "))
        out["process_start_time_seconds"] = btime + int(fields[19]) / ticks
        out["process_open_fds"] = len(os.listdir("/proc/self/fd"))
        out["process_max_fds"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError, IndexError, StopIteration):
        pass  # not Linux, or /proc hidden: these series are left out
    return out


PROCESS_HELP = {
    "process_cpu_seconds_total": ("counter", "User and system CPU time spent, seconds."),
    "process_threads": ("gauge", "Threads of the router process."),
    "process_virtual_memory_bytes": ("gauge", "Virtual memory size in bytes."),
    "process_resident_memory_bytes": ("gauge", "Resident memory size in bytes."),
    "process_start_time_seconds": ("gauge", "Start time of the process, Unix time."),
    "process_open_fds": ("gauge", "Open file descriptors."),
    "process_max_fds": ("gauge", "The limit of open file descriptors."),
}


def render(st: RouterStatus, process: dict[str, float] | None = None) -> str:
    lines: list[str] = []

    def metric(
        name: str, kind: str, help_: str, samples: list[tuple[dict[str, object], float]]
    ) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{_labels(**labels)} {_value(value)}")

    metric(
        "mesh_info",
        "gauge",
        "This router.",
        [({"peer": st["name"], "nickname": st["nickname"], "version": st["version"]}, 1)],
    )
    build: dict[str, object] = {
        "version": st["version"],
        "protocol": st.get("protocol", ""),
        "dataplane": st.get("dataplane", ""),
        "python": platform.python_version(),
    }
    metric("mesh_build_info", "gauge", "What this router runs.", [(build, 1)])
    if "start_time" in st:
        metric(
            "mesh_start_time_seconds",
            "gauge",
            "When the router started, Unix time.",
            [({}, st["start_time"])],
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
            who = {"peer": c["peer"], "nickname": c["nickname"]}
            samples.append(({**who, "direction": "tx"}, tx))
            samples.append(({**who, "direction": "rx"}, rx))
        metric(name, "counter", help_, samples)
    metric(
        "mesh_path_mtu_bytes",
        "gauge",
        "Datagram size in use towards each peer.",
        [({"peer": c["peer"], "nickname": c["nickname"]}, c["datagram_size"]) for c in conns],
    )
    drops: dict[str, int] = {}
    for k, v in st["drops"].items():
        reason = k if k in DROP_REASONS else "other"
        drops[reason] = drops.get(reason, 0) + v
    metric(
        "mesh_drops_total",
        "counter",
        "Input dropped, by reason.",
        [({"reason": k}, v) for k, v in sorted(drops.items())],
    )
    events, work, internal = _events(st["counters"])
    metric(
        "mesh_dataplane_total",
        "counter",
        "The data plane's work: in C, and what it handed to Python.",
        [({"counter": k}, v) for k, v in sorted(work.items())],
    )
    metric(
        "mesh_events_total",
        "counter",
        "Connection and routing events.",
        [({"event": k}, v) for k, v in sorted(events.items())],
    )
    metric(
        "mesh_internal_errors_total",
        "counter",
        "Bugs caught on the data path, by where (each logged once).",
        [({"where": k}, v) for k, v in sorted(internal.items())],
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
    for name, value in (process or {}).items():
        kind, help_ = PROCESS_HELP[name]
        metric(name, kind, help_, [({}, value)])
    return "\n".join(lines) + "\n"


async def serve(
    status: Callable[[], RouterStatus],
    host: str,
    port: int,
    boundary: Boundary | None = None,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A minimal HTTP server: GET /metrics returns ``render(status())``."""

    boundary = boundary if boundary is not None else Boundary(logging.getLogger("meshrouter"))

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await answer(stream)
        except Exception as exc:  # this scrape's alone
            boundary.failed("metrics", exc, trio.current_time())

    async def answer(stream: trio.SocketStream) -> None:
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
                body = render(status(), process_stats()).encode()
                head = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            else:
                body = b"try /metrics\n"
                head = b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(head + body)

    listeners = await trio.open_tcp_listeners(port, host=host)
    await trio.serve_listeners(handler, listeners, task_status=task_status)
