"""mesh expose, hide: this host's own address on the mesh."""

from __future__ import annotations

import argparse
from typing import Any

from launcher.common import (
    _ask,
    add_command,
)
from launcher.parser import Parser
from meshrouter.contract import requests as rq


def cmd_expose(a: argparse.Namespace) -> int:
    cidrs = a.cidrs or [None]
    for cidr in cidrs:
        got = _ask(a.state_dir, rq.Expose(cidr, not a.without_masquerade, a.hostname))
    print(got)
    return 0


def cmd_hide(a: argparse.Namespace) -> int:
    gone = _ask(a.state_dir, rq.Hide())
    print(f"hidden: {gone}" if gone else "the host had no address on the mesh")
    return 0


def register(
    sub: argparse._SubParsersAction[Parser],
    common: Parser,
    config_defaults: dict[str, Any] | None,
) -> None:
    """Add this group's commands to ``sub``."""
    sp = add_command(
        sub,
        common,
        "expose",
        description="Put an address of the mesh on the bridge (allocated, or each CIDR "
        "given) so this host reaches every container, and masquerade containers' traffic "
        "to addresses outside the mesh through this host (an nftables table "
        "'meshrouter_nat'). Kept across a router restart; undone by 'mesh hide'. "
        "With DNS on, the address is named after this peer (or -h FQDN).",
        add_help=False,
    )
    sp.add_argument("--help", action="help", help="show this help message and exit")
    sp.add_argument("cidrs", nargs="*", metavar="CIDR")
    sp.add_argument(
        "--without-masquerade", action="store_true", help="do not masquerade for containers"
    )
    sp.add_argument("-h", "--hostname", metavar="FQDN", help="the host's name in DNS")
    sp.set_defaults(func=cmd_expose)

    sp = add_command(sub, common, "hide")
    sp.set_defaults(func=cmd_hide)
