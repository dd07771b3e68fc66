"""mesh attach, detach, reattach, prune, ps: containers on the mesh."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from launcher import attach as attach_mod
from launcher import guard, views
from launcher.common import (
    COMMANDS,
    CliError,
    Parser,
    _ask,
    _by_name,
    _launch_config,
    _router_running,
    _status,
)
from launcher.containers import ContainerError, docker_endpoints, resolve
from launcher.interrupts import Interrupts
from meshrouter.contract import requests as rq
from meshrouter.host.netdev import link_exists


@dataclasses.dataclass(frozen=True)
class AttachSettings:
    bridge: str
    mesh_range: str
    mtu: int
    dns_address: str | None = None  # None: the router serves no DNS
    dns_domain: str = ""


def _attach_settings(a: argparse.Namespace) -> AttachSettings:
    if _router_running(a.state_dir):
        st = _status(a.state_dir)
        dns = st["dns"]
        return AttachSettings(
            st["bridge"],
            st["ipalloc_range"],
            int(st["mtu"]),
            dns["address"] if dns["enabled"] else None,
            dns["domain"],
        )
    cfg = _launch_config(a.state_dir)
    if not cfg:
        raise CliError("no mesh on this host: run 'mesh launch' first")
    return AttachSettings(cfg["bridge"], cfg["ipalloc_range"], int(cfg["mtu"]))


def _wants(a: argparse.Namespace, specs: list[str]) -> list[attach_mod.Want]:
    """``CIDR``, ``net:SUBNET`` or ``net:default`` each; none: one address in
    the default subnet (launch's --ipalloc-default-subnet, else the range)."""
    default = _launch_config(a.state_dir).get("default_subnet") or None
    out = []
    for spec in specs:
        if spec.startswith("net:"):
            subnet = spec[4:]
            out.append(attach_mod.Want(subnet=default if subnet == "default" else subnet))
        else:
            out.append(attach_mod.Want(cidr=spec.removeprefix("ip:")))
    return out or [attach_mod.Want(subnet=default)]


def cmd_attach(a: argparse.Namespace) -> int:
    with Interrupts() as interrupts:
        try:
            return _attach(a, interrupts)
        except attach_mod.AttachInterrupted as exc:
            print(f"mesh: {exc}", file=sys.stderr)
            return 130


def _attach(a: argparse.Namespace, interrupts: Interrupts) -> int:
    registry = attach_mod.Registry(a.state_dir)
    container = a.args[-1]
    with attach_mod.before_anything(interrupts):
        settings = _attach_settings(a)
    try:
        rec, added = attach_mod.attach(
            registry,
            container,
            _wants(a, a.args[:-1]),
            bridge=settings.bridge,
            mesh_range=settings.mesh_range,
            mtu=settings.mtu,
            ipam=attach_mod.RouterIpam(a.state_dir),
            dns_address=settings.dns_address,
            guard_port=not a.no_guard,
            allow_outside=True,
            interrupts=interrupts,
        )
    except attach_mod.AttachInterrupted:
        raise
    except attach_mod.AttachError as exc:
        raise CliError(str(exc)) from None
    for cidr in added:
        iface = ipaddress.IPv4Interface(cidr)
        if iface.ip in ipaddress.IPv4Network(settings.mesh_range):
            continue
        print(
            f"mesh: note: {iface.ip} is outside the mesh range {settings.mesh_range}: "
            "not allocated by IPAM, so nothing stops another host using it too",
            file=sys.stderr,
        )
        for route in attach_mod.host_routes_overlapping(iface.network):
            print(
                f"mesh: warning: {iface.network} overlaps this host's route '{route}': "
                "the host sends traffic for those addresses there, not to the mesh",
                file=sys.stderr,
            )
    if settings.dns_address and added:
        name = "" if a.without_dns else a.hostname or rec.hostname
        _register_name(a.state_dir, registry, rec, settings, name, added)
    print(" ".join(rec.cidrs))
    if interrupts.pending is not None:  # it came too late to stop: say what holds
        print(
            f"mesh: interrupted after {container} was attached: it keeps {' '.join(rec.cidrs)} "
            f"('mesh detach {container}' undoes it)",
            file=sys.stderr,
        )
        return 130
    return 0


def _register_name(
    state_dir: Path,
    registry: attach_mod.Registry,
    rec: attach_mod.Attachment,
    settings: AttachSettings,
    name: str,
    addrs: list[str],
) -> None:
    """The container's name in the mesh's DNS (none when ``name`` is empty), and
    its resolv.conf (a named netns)."""
    assert settings.dns_address is not None
    try:
        if name:
            _ask(state_dir, rq.DnsAdd(rec.ident, [name], addrs))
        attach_mod.write_resolv_conf(registry, rec, settings.dns_address, settings.dns_domain)
    except (CliError, OSError) as exc:
        print(
            f"mesh: warning: {rec.container} attached, but not named in DNS: {exc}", file=sys.stderr
        )


def cmd_reattach(a: argparse.Namespace) -> int:
    """A recorded container started again (the router saw it): put it back on
    the mesh with the address and name it had.  Nothing to do otherwise."""
    registry = attach_mod.Registry(a.state_dir)
    rec = attach_mod.find(registry, a.container)
    if rec is None:
        return _adopt_endpoints(a, registry)
    if link_exists(rec.host_veth) or rec.kind != "docker":
        return 0  # still attached, or not a container that can restart
    try:
        c = resolve(rec.ident)  # its new namespace
    except ContainerError as exc:
        raise CliError(f"{rec.container}: {exc}") from None
    with registry.locked() as records:
        records.pop(rec.ident, None)
    settings = _attach_settings(a)
    try:
        new, _ = attach_mod.attach(
            registry,
            rec.container,
            [attach_mod.Want(cidr=x) for x in rec.cidrs],
            bridge=settings.bridge,
            mesh_range=settings.mesh_range,
            mtu=settings.mtu,
            ipam=attach_mod.RouterIpam(a.state_dir),
            dns_address=settings.dns_address,
            container=c,
            guard_port=rec.guard,
            allow_outside=True,
        )
    except attach_mod.AttachError as exc:
        raise CliError(f"{rec.container}: {exc}") from None
    if settings.dns_address and rec.hostname:
        _register_name(a.state_dir, registry, new, settings, rec.hostname, new.cidrs)
    print(f"{rec.container} attached again with {' '.join(new.cidrs)}")
    return 0


def cmd_prune(a: argparse.Namespace) -> int:
    registry = attach_mod.Registry(a.state_dir)
    for rec in attach_mod.prune(registry, attach_mod.RouterIpam(a.state_dir)):
        if rec.state == attach_mod.PENDING:
            print(f"{rec.container}: an interrupted attach was undone")
        else:
            print(f"{rec.container} is gone: its record and anti-spoofing rules removed")
    return 0


def _adopt_endpoints(a: argparse.Namespace, registry: attach_mod.Registry) -> int:
    """A Docker container started with addresses from this router's 'mesh'
    driver (``docker run --network mesh``): name it in DNS, and record it like
    an attached container (``mesh ps``, anti-spoofing rules; 'mesh prune'
    forgets it once it is gone)."""
    try:
        c = resolve(a.container)
    except ContainerError:
        return 0
    if c.kind != "docker":
        return 0
    settings = _attach_settings(a)
    for ep in docker_endpoints(c.ident):
        key = _ask(a.state_dir, rq.Holder(ep.address.split("/")[0]))
        if not isinstance(key, str) or not key.startswith("docker-net/"):
            continue  # not an address of our driver
        try:
            ifname, host = attach_mod.host_end(c, ep.address)
        except attach_mod.AttachError as exc:
            print(f"mesh: warning: {c.hostname}: {exc}", file=sys.stderr)
            continue
        rec = attach_mod.Attachment(
            c.hostname,
            "docker-net",
            key,
            c.ns_path,
            host,
            [ep.address],
            ep.mac,
            c.hostname,
            ifname=ifname,
        )
        with registry.locked() as records:
            records[key] = rec
        if settings.dns_address and c.hostname:
            _register_name(a.state_dir, registry, rec, settings, c.hostname, rec.cidrs)
        print(f"{c.hostname} on Docker network {ep.network} with {ep.address}")
    return 0


def cmd_detach(a: argparse.Namespace) -> int:
    with Interrupts() as interrupts:  # a detach runs to its end once begun
        code = _detach(a)
    if interrupts.pending is not None:
        print(f"mesh: interrupted after the detach of {a.args[-1]} had finished", file=sys.stderr)
        return 130
    return code


def _detach(a: argparse.Namespace) -> int:
    container, addrs = a.args[-1], a.args[:-1]
    try:
        done = attach_mod.detach(
            attach_mod.Registry(a.state_dir),
            container,
            attach_mod.RouterIpam(a.state_dir),
            addrs,
        )
    except attach_mod.AttachError as exc:
        raise CliError(str(exc)) from None
    if done is None:
        raise CliError(f"{container} is not attached to the mesh")
    rec, gone = done
    if addrs and rec.cidrs and rec.ident in attach_mod.Registry(a.state_dir).read():
        print(f"{', '.join(gone)} removed from {container} (keeps {' '.join(rec.cidrs)})")
    else:
        print(f"{container} detached{' (' + ' '.join(gone) + ')' if gone else ''}")
    return 0


def cmd_ps(a: argparse.Namespace) -> int:
    records = attach_mod.Registry(a.state_dir).read()
    if a.json:
        print(json.dumps([_ps_record(r) for r in sorted(records.values(), key=_by_name)], indent=2))
        return 0
    dropped = guard.counts()
    rows = [
        [
            r.container,
            r.kind,
            r.mac,
            " ".join(r.cidrs),
            r.state or ("up" if link_exists(r.host_veth) else "gone"),
            dropped.get(r.host_veth, 0) if r.guard else "off",
        ]
        for r in sorted(records.values(), key=lambda r: r.container)
    ]
    views.table(["CONTAINER", "KIND", "MAC", "ADDRESS", "LINK", "SPOOFED"], rows)
    return 0


def _ps_record(r: attach_mod.Attachment) -> dict[str, Any]:
    """One attachment for 'mesh ps --json': its record and the state of its link."""
    link = r.state or ("up" if link_exists(r.host_veth) else "gone")
    return {**asdict(r), "link": link}


def register(
    sub: argparse._SubParsersAction[Parser],
    common: Parser,
    config_defaults: dict[str, Any] | None,
) -> None:
    """Add this group's commands to ``sub``."""
    sp = sub.add_parser(
        "attach",
        parents=[common],
        help=COMMANDS["attach"][1],
        description="Give CONTAINER (a named network namespace, or a Docker or podman "
        "container by name or id) an interface 'ethwe' on the mesh with each address "
        "asked for: CIDR (e.g. 10.32.0.5/12), net:SUBNET (one IPAM allocates in it) or "
        "net:default; none: one IPAM allocates. A container attached already gains the "
        "addresses it does not have. An address outside the mesh range is accepted as "
        "the operator's own (not allocated; a warning where it overlaps a route of this "
        "host). Prints the container's addresses.",
    )
    sp.usage = "mesh attach [-h] [--state-dir DIR] [CIDR | net:SUBNET | net:default]... CONTAINER"
    sp.add_argument("args", nargs="+", metavar="[ADDR...] CONTAINER", help=argparse.SUPPRESS)
    sp.add_argument(
        "--without-dns", action="store_true", help="do not name the container in the mesh's DNS"
    )
    sp.add_argument(
        "--no-guard",
        action="store_true",
        help="no anti-spoofing rules for it (a container that routes for others)",
    )
    sp.add_argument(
        "-H",
        "--hostname",
        metavar="NAME",
        help="its DNS name (default: the netns or Docker container name; "
        "NAME.DOMAIN unless NAME has a dot)",
    )
    sp.set_defaults(func=cmd_attach)

    sp = sub.add_parser(
        "reattach",
        parents=[common],
        help=COMMANDS["reattach"][1],
        description="If CONTAINER (a Docker id or name) was attached and has lost its link, "
        "attach it again with the same address and name. The router runs this on every "
        "container start the Docker engine reports.",
    )
    sp.add_argument("container", metavar="CONTAINER")
    sp.set_defaults(func=cmd_reattach)

    sp = sub.add_parser(
        "prune",
        parents=[common],
        help=COMMANDS["prune"][1],
        description="Drop the records (and anti-spoofing rules) of attached containers "
        "that no longer exist: removed from their engine, or their namespace deleted. "
        "The router runs this when it finds their namespaces gone.",
    )
    sp.set_defaults(func=cmd_prune)

    sp = sub.add_parser(
        "detach",
        parents=[common],
        help=COMMANDS["detach"][1],
        description="Without addresses: remove CONTAINER's link to the mesh and release all "
        "its addresses. With ADDR...: release only those; the link goes with the last one.",
    )
    sp.usage = "mesh detach [-h] [--state-dir DIR] [ADDR...] CONTAINER"
    sp.add_argument("args", nargs="+", metavar="[ADDR...] CONTAINER", help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_detach)

    sp = sub.add_parser("ps", parents=[common], help=COMMANDS["ps"][1])
    sp.add_argument("--json", action="store_true", help="the records as JSON")
    sp.set_defaults(func=cmd_ps)
