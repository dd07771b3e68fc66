"""``mesh kube-sync``: peers from the Kubernetes API (Weave's kube-utils, as a loop).

Every ``--interval`` seconds it lists the cluster's nodes and

* asks the router to connect to each other node's InternalIP (targets are
  idempotent, so asking again is free);
* remembers which mesh peer runs on which node (the DaemonSet gives the
  router ``--nickname`` = the node's name), in ``kube-peers.json`` in the
  state directory, so a peer can still be named after the topology forgot
  it;
* when a node is deleted from the cluster, runs ``rmpeer`` of its peer, so
  its address share comes back without an operator.  Only the peer with the
  lowest name among the reachable ones does it, so two peers do not reclaim
  the same share at once.

The decisions are ``plan()`` (no I/O, unit-tested); the kubernetes client
library is imported only by ``list_nodes``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from meshrouter.contract import apiclient
from meshrouter.contract import requests as rq
from meshrouter.contract.state import atomic_write, load_json
from meshrouter.contract.status import RouterStatus


@dataclass(frozen=True)
class Node:
    name: str
    address: str  # InternalIP, else the first address


@dataclass
class Plan:
    connect: list[str] = field(default_factory=list)
    rmpeer: list[str] = field(default_factory=list)  # peer names (MAC form)
    known: dict[str, str] = field(default_factory=dict)  # peer name -> node name


def plan(nodes: list[Node], status: RouterStatus, known: dict[str, str], port: int = 6783) -> Plan:
    """What to do, from the nodes, the router's status and what we knew before."""
    me = status["name"]
    node_names = {n.name for n in nodes}
    out = Plan(known=dict(known))
    for p in status["peers"]:
        if p["nickname"] in node_names:
            out.known[p["peer"]] = p["nickname"]
    mine = out.known.get(me) or status["nickname"]
    out.connect = sorted(f"{n.address}:{port}" for n in nodes if n.name != mine and n.address)
    reachable = {p["peer"] for p in status["peers"] if p["reachable"]}
    owners = {s["peer"] for s in status["ipam"]["shares"]}
    leader = min(reachable, default=me) == me
    for peer, node in sorted(out.known.items()):
        if node in node_names or peer == me:
            continue
        if peer in reachable:
            continue  # the node object is gone but the peer still runs: wait
        if peer in owners and leader:
            out.rmpeer.append(peer)
        if peer not in owners:
            del out.known[peer]  # nothing left to reclaim
    return out


def list_nodes() -> list[Node]:
    """The cluster's nodes, through the kubernetes client library."""
    from kubernetes import client, config  # only this command needs it

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    out = []
    for item in client.CoreV1Api().list_node().items:
        if item.metadata is None or not item.metadata.name:
            continue
        addrs = (item.status.addresses if item.status else None) or []
        internal = [a.address for a in addrs if a.type == "InternalIP"]
        out.append(Node(item.metadata.name, (internal or [a.address for a in addrs] or [""])[0]))
    return out


def sync_once(state_dir: Path, port: int) -> Plan:
    status = apiclient.ask(state_dir, rq.Status())
    path = state_dir / "kube-peers.json"
    known = load_json(path, {})
    p = plan(list_nodes(), status, known if isinstance(known, dict) else {}, port)
    for target in p.connect:
        apiclient.ask(state_dir, rq.Connect(target))
    for peer in p.rmpeer:
        try:
            done = apiclient.ask(state_dir, rq.Rmpeer(peer))
            print(f"node of peer {peer} deleted: {done}")
        except apiclient.ApiError as exc:
            print(f"rmpeer {peer}: {exc}", file=sys.stderr)
    if p.known != known:
        atomic_write(path, json.dumps(p.known).encode())
    return p


def run(state_dir: Path, port: int, interval: float, once: bool) -> int:
    while True:
        try:
            p = sync_once(state_dir, port)
            if once:
                print(f"targets: {', '.join(p.connect) or 'none'}; rmpeer: {len(p.rmpeer)}")
                return 0
        except (OSError, apiclient.ApiError) as exc:
            print(f"mesh kube-sync: {exc}", file=sys.stderr)
            if once:
                return 1
        except Exception as exc:  # the API server's errors: keep going
            print(f"mesh kube-sync: Kubernetes API: {exc}", file=sys.stderr)
            if once:
                return 1
        time.sleep(interval)
