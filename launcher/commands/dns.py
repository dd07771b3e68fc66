"""mesh dns-add, dns-remove, dns-lookup, dns-args: names in the mesh's DNS."""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any

from launcher.common import (
    _ask,
    add_command,
)
from launcher.parser import CliError, Parser
from meshrouter.attachments import attach as attach_mod
from meshrouter.contract import requests as rq
from meshrouter.engines.containers import ContainerError, resolve


def _split_dns_args(a: argparse.Namespace) -> tuple[list[str], str | None]:
    """``ADDR... [CONTAINER]``: the addresses, and the container if the last
    argument is not an address."""
    args = list(a.args)
    container = None
    if args:
        try:
            ipaddress.ip_interface(args[-1])
        except ValueError:
            container = args.pop()
    for x in args:
        try:
            ipaddress.IPv4Interface(x)
        except ValueError:
            if ":" in x:
                raise CliError(
                    f"{x}: the mesh's DNS records hold IPv4 addresses (AAAA answers are "
                    "their images in --ipalloc-range6): name the IPv4 address"
                ) from None
            raise CliError(f"{x!r} is not an IPv4 address") from None
    if container is None and not a.hostname:
        raise CliError(f"name what: mesh {a.command} ADDR... CONTAINER, or ADDR... -h FQDN")
    return args, container


def _dns_key(a: argparse.Namespace, container: str | None) -> tuple[str, str | None, list[str]]:
    """(the router's key for the entries, the name, the container's addresses)."""
    if container is None:
        return f"fqdn:{a.hostname}", a.hostname, []
    records = attach_mod.Registry(a.state_dir).read()
    rec = next((r for r in records.values() if container in (r.container, r.ident)), None)
    if rec is not None:
        return rec.ident, a.hostname or rec.hostname or rec.container, list(rec.cidrs)
    try:
        c = resolve(container)
    except ContainerError as exc:
        raise CliError(str(exc)) from None
    return c.ident, a.hostname or c.hostname, []


def cmd_dns_add(a: argparse.Namespace) -> int:
    addrs, container = _split_dns_args(a)
    key, name, attached = _dns_key(a, container)
    addrs = addrs or attached
    if not addrs:
        raise CliError(f"{container} is not attached: give its address(es)")
    n = _ask(a.state_dir, rq.DnsAdd(key, [name] if name else [], addrs))
    print(f"{name}: {', '.join(addrs)} ({n} new)")
    return 0


def cmd_dns_remove(a: argparse.Namespace) -> int:
    addrs, container = _split_dns_args(a)
    key, name, _ = _dns_key(a, container)
    only = a.hostname if a.hostname and container is not None else None
    n = 0
    each: list[str | None] = list(addrs) or [None]
    for addr in each:
        n += int(_ask(a.state_dir, rq.DnsRemove(key, only, addr)))
    print(f"{n} DNS entr{'y' if n == 1 else 'ies'} of {name or container} removed")
    return 0


def cmd_dns_lookup(a: argparse.Namespace) -> int:
    found = _ask(a.state_dir, rq.DnsLookup(a.name))
    if not found:
        raise CliError(f"no mesh DNS entry for {a.name}")
    print("\n".join(found))
    return 0


def cmd_dns_args(a: argparse.Namespace) -> int:
    dns = _ask(a.state_dir, rq.Dns())
    if not dns["enabled"]:
        raise CliError("the router serves no DNS (launched with --no-dns)")
    print(f"--dns={dns['address']} --dns-search={dns['domain'].rstrip('.')}")
    return 0


def register(
    sub: argparse._SubParsersAction[Parser],
    common: Parser,
    config_defaults: dict[str, Any] | None,
) -> None:
    """Add this group's commands to ``sub``."""
    for cmd, func, what in (
        ("dns-add", cmd_dns_add, "add"),
        ("dns-remove", cmd_dns_remove, "remove"),
    ):
        sp = add_command(
            sub,
            common,
            cmd,
            description=f"mesh {cmd} [ADDR...] CONTAINER [-h FQDN] | mesh {cmd} ADDR... -h FQDN: "
            f"{what} the name of CONTAINER (its netns or Docker name, or FQDN) with ADDRs "
            "(default: its attached address), mesh-wide. Addresses outside the mesh are "
            "allowed. A NAME without a dot becomes NAME.DOMAIN (--dns-domain).",
            add_help=False,
        )
        sp.add_argument("--help", action="help", help="show this help message and exit")
        sp.add_argument("args", nargs="*", metavar="ADDR|CONTAINER")
        sp.add_argument("-h", "--hostname", metavar="FQDN", help="the name")
        sp.set_defaults(func=func)

    sp = add_command(sub, common, "dns-lookup")
    sp.add_argument("name", metavar="NAME")
    sp.set_defaults(func=cmd_dns_lookup)

    sp = add_command(sub, common, "dns-args")
    sp.set_defaults(func=cmd_dns_args)
