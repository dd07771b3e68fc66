"""Status assembly: the typed ``RouterStatus`` from what each part knows.

The mesh core gives its own part (connections, targets, peers, counters); the
forwarder its counters and drops; IPAM, DNS and the fast path theirs; the
router its settings.  ``mesh status``, ``mesh report``, the API and the
metrics all read this one value.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING

import trio

from meshrouter import __version__
from meshrouter.base.constants import protocol_versions
from meshrouter.contract.status import DnsStatus, RouterStatus
from meshrouter.dataplane.sessionstate import native_available

if TYPE_CHECKING:
    from meshrouter.daemon.router import Router


def router_status(r: Router, now: float) -> RouterStatus:
    mesh, udp, fwd, tap = r.mesh, r._udp, r.forwarder, r._tap
    fstats = fwd.statistics() if fwd is not None else None
    base = mesh.status(now)
    counters = Counter(base["counters"])
    counters.update(r.boundary.counts)
    if fstats is not None:
        counters.update(fstats.counters)
    if r.fastpath is not None and r.fastpath_service is not None:
        core = r.fastpath.core
        counters.update({f"fastpath_{k}": v for k, v in core.status().items()})
        r.fastpath.annotate(base["connections"])
    return {
        **base,
        "counters": dict(counters),
        "version": __version__,
        "tasks": _count_tasks(),
        "threads": threading.active_count(),
        "port": r.opts.port,
        "relay": r.opts.relay,
        "bridge": r.opts.bridge,
        "tap": tap.name if tap else None,
        "ipalloc_range": r.opts.ipalloc_range,
        "ipalloc_range6": r.opts.ipalloc_range6,
        "mtu": r.opts.mtu,
        "encryption": True,
        "uptime": round(now - r.started_at, 1),
        "macs": fstats.macs if fstats is not None else 0,
        "drops": fstats.drops if fstats is not None else {},
        "offload": {
            "tap": bool(tap and tap.offload),
            "udp_gso": bool(fwd and fwd.gso),
            "udp_gro": bool(udp and udp.gro),
            "gso_sends": fwd.gso_sends if fwd else 0,
        },
        "dataplane": fwd.dataplane if fwd is not None else "python",
        "dataplane_built": native_available(),
        "protocol": protocol_versions(),
        "start_time": r.started_wall,
        "ipam": r.ipam.status(mesh.nickname_of, now),
        "dns": dns_status(r),
        "expose": r.exposed,
    }


def dns_status(r: Router) -> DnsStatus:
    opts, server = r.opts, r.dns_server
    entries = sorted(r.dns.records.live(), key=lambda e: (e.name, e.addr))
    return {
        "enabled": server is not None,
        "domain": r.dns_domain,
        "address": opts.dns_listen_address,
        "addresses": list(server.served) if server else [],
        "ttl": opts.dns_ttl,
        "upstream": [f"{h}:{p}" for h, p in server.upstreams] if server else [],
        "entries": [
            {
                "name": e.name,
                "address": e.address,
                "container": e.container,
                "peer": r.mesh.nickname_of(e.origin),
            }
            for e in entries
        ],
        "counters": server.statistics() if server else {},
    }


def _count_tasks() -> int:
    """Live trio tasks (the soak test watches this for leaks)."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    return walk(root) if root is not None else 0
