"""Kubernetes without a cluster: kube-sync's decisions, and the DaemonSet
manifest read as Kubernetes and our CLI would read it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from launcher.cli import build_parser
from launcher.kube import Node, plan

MANIFEST = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes" / "meshrouter.yaml"
A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"


def status(me: str, peers: list[tuple[str, str, bool]], owners: list[str]) -> dict[str, Any]:
    return {
        "name": me,
        "nickname": dict((p[0], p[1]) for p in peers)[me],
        "peers": [{"peer": n, "nickname": nick, "reachable": r} for n, nick, r in peers],
        "connections": [],
        "ipam": {"shares": [{"peer": o} for o in owners]},
    }


NODES = [Node("n1", "192.0.2.1"), Node("n2", "192.0.2.2"), Node("n3", "192.0.2.3")]


def test_every_other_node_is_a_target_and_peers_are_learnt_by_node_name() -> None:
    st = status(A, [(A, "n1", True), (B, "n2", True)], [A, B])
    p = plan(NODES, st, {})
    assert p.connect == ["192.0.2.2:6783", "192.0.2.3:6783"]
    assert p.known == {A: "n1", B: "n2"}
    assert p.rmpeer == []


def test_a_deleted_nodes_peer_is_reclaimed_by_the_lowest_reachable_peer_only() -> None:
    known = {A: "n1", B: "n2", C: "n3"}
    nodes = NODES[:2]  # n3 deleted
    st = status(A, [(A, "n1", True), (B, "n2", True), (C, "n3", False)], [A, B, C])
    assert plan(nodes, st, known).rmpeer == [C]
    st_b = status(B, [(A, "n1", True), (B, "n2", True), (C, "n3", False)], [A, B, C])
    assert plan(nodes, st_b, known).rmpeer == []  # B is not the lowest: A does it
    # Forgotten by the topology, still owning a share: still found by name.
    st = status(A, [(A, "n1", True), (B, "n2", True)], [A, B, C])
    assert plan(nodes, st, known).rmpeer == [C]
    # Once its share is gone there is nothing to remember.
    st = status(A, [(A, "n1", True), (B, "n2", True)], [A, B])
    assert C not in plan(nodes, st, known).known


def test_a_peer_still_running_is_not_reclaimed_when_its_node_object_goes() -> None:
    st = status(A, [(A, "n1", True), (C, "n3", True)], [A, C])
    assert plan(NODES[:1], st, {C: "n3"}).rmpeer == []


def docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def test_the_manifest_is_whole_and_its_commands_are_ours() -> None:
    kinds = {d["kind"]: d for d in docs()}
    assert set(kinds) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"}
    assert kinds["ClusterRole"]["rules"][0]["resources"] == ["nodes"]
    pod = kinds["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["hostPID"] is True
    assert pod["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    containers = pod["initContainers"] + pod["containers"]
    for c in containers:
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, m
    by_name = {c["name"]: c for c in containers}
    router = by_name["router"]
    env = {e["name"]: e.get("value", "x") for e in router["env"]}
    assert router["securityContext"]["privileged"] is True
    assert {m["mountPath"] for m in router["volumeMounts"]} >= {"/dev/net/tun", "/var/run/netns"}
    assert any(e.get("valueFrom", {}).get("secretKeyRef") for e in router["env"])
    parser = build_parser()
    # The image's entrypoint is 'mesh router'; the args must be its options.
    ns = parser.parse_args(["router", *expand(router["args"], dict(env, NODE_NAME="n1"))])
    assert ns.ipalloc_range == "10.32.0.0/12"
    assert ns.nickname == "n1"
    for name in ("install-cni", "kube-sync"):
        cmd = by_name[name]["command"]
        assert cmd[0] == "mesh"
        parser.parse_args(cmd[1:])  # exits on an unknown option
    init = parser.parse_args(by_name["install-cni"]["command"][1:])
    assert init.exec_in_router is True
    assert init.state_dir == Path("/var/lib/meshrouter")
