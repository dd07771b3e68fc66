"""mesh attach, detach, reattach, prune, ps: containers on the mesh."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from dataclasses import asdict
from typing import Any

from launcher import views
from launcher.common import (
    _ask,
    _by_name,
    _launch_config,
    _router_running,
    _status,
    add_command,
)
from launcher.parser import CliError, Parser
from meshrouter.attachments import attach as attach_mod
from meshrouter.attachments import restart
from meshrouter.attachments.interrupts import Interrupts
from meshrouter.contract import apiclient
from meshrouter.contract import requests as rq
from meshrouter.host import guard
from meshrouter.host.netdev import link_exists


def _attach_settings(a: argparse.Namespace) -> restart.Settings:
    if _router_running(a.state_dir):
        st = _status(a.state_dir)
        dns = st["dns"]
        return restart.Settings(
            st["bridge"],
            st["ipalloc_range"],
            int(st["mtu"]),
            dns["address"] if dns["enabled"] else None,
            dns["domain"],
            str(st.get("ipalloc_range6") or ""),
        )
    cfg = _launch_config(a.state_dir)
    if not cfg:
        raise CliError("no mesh on this host: run 'mesh launch' first")
    return restart.Settings(
        cfg["bridge"],
        cfg["ipalloc_range"],
        int(cfg["mtu"]),
        mesh_range6=cfg.get("ipalloc_range6") or "",
    )


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
            range6=settings.mesh_range6,
        )
    except attach_mod.AttachInterrupted:
        raise
    except attach_mod.AttachError as exc:
        raise CliError(str(exc)) from None
    _notes(settings, added)
    added4 = [x for x in added if not attach_mod.is_ipv6(x)]
    if settings.dns_address and added4:
        name = "" if a.without_dns else a.hostname or rec.hostname
        _register_name(a, registry, rec, settings, name, added4)
    print(" ".join(rec.addresses))
    if interrupts.pending is not None:  # it came too late to stop: say what holds
        print(
            f"mesh: interrupted after {container} was attached: it keeps "
            f"{' '.join(rec.addresses)} ('mesh detach {container}' undoes it)",
            file=sys.stderr,
        )
        return 130
    return 0


def _notes(settings: restart.Settings, added: list[str]) -> None:
    """What the operator should know of addresses outside the ranges."""
    for cidr in added:
        if attach_mod.is_ipv6(cidr):
            if not settings.mesh_range6 or ipaddress.IPv6Interface(
                cidr
            ).ip not in ipaddress.IPv6Network(settings.mesh_range6):
                print(
                    f"mesh: note: {cidr.split('/')[0]} is the operator's address: no IPAM "
                    "hands it out, so nothing stops another host using it too, and the "
                    "mesh DNS has no AAAA for it ('mesh launch --ipalloc-range6' gives "
                    "containers IPv6 addresses that have both)",
                    file=sys.stderr,
                )
            continue
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


class ApiAccess(attach_mod.RouterIpam):
    """What a restart asks of the mesh, over the router's API (``restart.MeshAccess``)."""

    def holder(self, address: str) -> str | None:
        return _ask(self.state_dir, rq.Holder(address))

    def add_name(self, container: str, names: list[str], addrs: list[str]) -> None:
        apiclient.ask(self.state_dir, rq.DnsAdd(container, names, addrs))


def _tell(told: restart.Told) -> int:
    for line in told.warnings:
        print(f"mesh: warning: {line}", file=sys.stderr)
    for line in told.lines:
        print(line)
    return 0


def _register_name(
    a: argparse.Namespace,
    registry: attach_mod.Registry,
    rec: attach_mod.Attachment,
    settings: restart.Settings,
    name: str,
    addrs: list[str],
) -> None:
    access = ApiAccess(a.state_dir)
    warning = restart.register_name(registry, rec, settings, access, name, addrs)
    if warning:
        print(f"mesh: warning: {warning}", file=sys.stderr)


def cmd_reattach(a: argparse.Namespace) -> int:
    """A recorded container started again: put it back on the mesh with the
    address and name it had (the router does this itself; for operators)."""
    registry = attach_mod.Registry(a.state_dir)
    try:
        return _tell(
            restart.reattach(registry, a.container, _attach_settings(a), ApiAccess(a.state_dir))
        )
    except restart.RestartError as exc:
        raise CliError(str(exc)) from None


def cmd_prune(a: argparse.Namespace) -> int:
    registry = attach_mod.Registry(a.state_dir)
    for line in restart.prune(registry, attach_mod.RouterIpam(a.state_dir)):
        print(line)
    return 0


def cmd_detach(a: argparse.Namespace) -> int:
    with Interrupts() as interrupts:  # a detach runs to its end once begun
        code = _detach(a)
    if interrupts.pending is not None:
        print(f"mesh: interrupted after the detach of {a.args[-1]} had finished", file=sys.stderr)
        return 130
    return code


def _ranges(a: argparse.Namespace) -> tuple[str, str] | None:
    """(--ipalloc-range, --ipalloc-range6) as launched here, None without IPv6."""
    cfg = _launch_config(a.state_dir)
    if not cfg.get("ipalloc_range6"):
        return None
    return str(cfg["ipalloc_range"]), str(cfg["ipalloc_range6"])


def _detach(a: argparse.Namespace) -> int:
    container, addrs = a.args[-1], a.args[:-1]
    try:
        done = attach_mod.detach(
            attach_mod.Registry(a.state_dir),
            container,
            attach_mod.RouterIpam(a.state_dir),
            addrs,
            _ranges(a),
        )
    except attach_mod.AttachError as exc:
        raise CliError(str(exc)) from None
    if done is None:
        raise CliError(f"{container} is not attached to the mesh")
    rec, gone = done
    if addrs and rec.addresses and rec.ident in attach_mod.Registry(a.state_dir).read():
        print(f"{', '.join(gone)} removed from {container} (keeps {' '.join(rec.addresses)})")
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
            " ".join(r.addresses),
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
    sp = add_command(
        sub,
        common,
        "attach",
        description="Give CONTAINER (a named network namespace, or a Docker or podman "
        "container by name or id) an interface 'ethwe' on the mesh with each address "
        "asked for: CIDR (e.g. 10.32.0.5/12), net:SUBNET (one IPAM allocates in it) or "
        "net:default; none: one IPAM allocates. A container attached already gains the "
        "addresses it does not have. An address outside the mesh range is accepted as "
        "the operator's own (not allocated; a warning where it overlaps a route of this "
        "host). CIDR may be IPv6 (fd32::5/64); with 'mesh launch --ipalloc-range6', each "
        "IPv4 address of the range brings its IPv6 image too. Prints the container's "
        "addresses.",
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

    sp = add_command(
        sub,
        common,
        "reattach",
        description="If CONTAINER (a Docker id or name) was attached and has lost its link, "
        "attach it again with the same address and name. The router runs this on every "
        "container start the Docker engine reports.",
    )
    sp.add_argument("container", metavar="CONTAINER")
    sp.set_defaults(func=cmd_reattach)

    sp = add_command(
        sub,
        common,
        "prune",
        description="Drop the records (and anti-spoofing rules) of attached containers "
        "that no longer exist: removed from their engine, or their namespace deleted. "
        "The router runs this when it finds their namespaces gone.",
    )
    sp.set_defaults(func=cmd_prune)

    sp = add_command(
        sub,
        common,
        "detach",
        description="Without addresses: remove CONTAINER's link to the mesh and release all "
        "its addresses. With ADDR...: release only those; the link goes with the last one.",
    )
    sp.usage = "mesh detach [-h] [--state-dir DIR] [ADDR...] CONTAINER"
    sp.add_argument("args", nargs="+", metavar="[ADDR...] CONTAINER", help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_detach)

    sp = add_command(sub, common, "ps")
    sp.add_argument("--json", action="store_true", help="the records as JSON")
    sp.set_defaults(func=cmd_ps)
