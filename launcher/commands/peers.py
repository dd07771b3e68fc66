"""mesh connect, forget, ping, rmpeer, password: the other routers."""

from __future__ import annotations

import argparse
import json
from typing import Any

from launcher.common import (
    _ask,
    add_command,
)
from launcher.parser import CliError, Parser
from meshrouter.contract import requests as rq
from meshrouter.contract.state import (
    read_password,
)


def cmd_connect(a: argparse.Namespace) -> int:
    for peer in a.peers:
        print(f"target {_ask(a.state_dir, rq.Connect(peer))} added")
    return 0


def cmd_forget(a: argparse.Namespace) -> int:
    for peer in a.peers:
        print(f"target {_ask(a.state_dir, rq.Forget(peer))} forgotten")
    return 0


def cmd_ping(a: argparse.Namespace) -> int:
    """Like 'tailscale ping': over the mesh's own encrypted UDP path."""
    res = _ask(a.state_dir, rq.Ping(a.peer, a.count, a.interval))
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        via = f" via relay {res['via_nickname']} ({res['via']})" if res["via"] else " direct"
        for rtt in res["rtt_ms"]:
            if rtt is None:
                print(f"no answer from {res['nickname']} within 1s")
            else:
                print(
                    f"pong from {res['nickname']} ({res['peer']}){via}, {res['address']}: {rtt} ms"
                )
        if res["via"]:
            print(f"(the round trips are to the relay {res['via_nickname']}; it forwards the rest)")
    return 0 if any(r is not None for r in res["rtt_ms"]) else 1


def cmd_rmpeer(a: argparse.Namespace) -> int:
    print(_ask(a.state_dir, rq.Rmpeer(a.peer)))
    return 0


def _duration(text: str) -> float:
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise CliError(f"--window {text!r}: give a duration like 90s, 30m or 2h") from None


def cmd_password(a: argparse.Namespace) -> int:
    if a.action == "retire":
        print(_ask(a.state_dir, rq.PasswordRetire()))
        return 0
    if not a.new_file:
        raise CliError("mesh password rotate --new-file FILE: the new password")
    try:
        password = read_password(a.new_file).decode()
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CliError(f"cannot read the new password from {a.new_file}: {exc}") from None
    print(_ask(a.state_dir, rq.PasswordRotate(password, _duration(a.window))))
    return 0


def register(
    sub: argparse._SubParsersAction[Parser],
    common: Parser,
    config_defaults: dict[str, Any] | None,
) -> None:
    """Add this group's commands to ``sub``."""
    sp = add_command(sub, common, "connect")
    sp.add_argument("peers", nargs="+", metavar="PEER")
    sp.set_defaults(func=cmd_connect)

    sp = add_command(sub, common, "forget")
    sp.add_argument("peers", nargs="+", metavar="PEER")
    sp.set_defaults(func=cmd_forget)

    sp = add_command(
        sub,
        common,
        "rmpeer",
        description="Take over the IP address share of PEER (name or nickname), which must "
        "be gone for good: its addresses become this host's to give out.",
    )
    sp.add_argument("peer", metavar="PEER")
    sp.set_defaults(func=cmd_rmpeer)

    sp = add_command(
        sub,
        common,
        "ping",
        description="Ping PEER (its name or nickname) from this router over the encrypted "
        "UDP path the data takes, like 'tailscale ping': says whether the path is direct or "
        "through a relay, the UDP address, and each round trip. Exit status 1 when no "
        "ping was answered.",
    )
    sp.add_argument("peer", metavar="PEER")
    sp.add_argument("-c", "--count", type=int, default=3, help="pings (1-100, default 3)")
    sp.add_argument(
        "-i", "--interval", type=float, default=0.2, help="seconds between pings (default 0.2)"
    )
    sp.add_argument("--json", action="store_true", help="as JSON")
    sp.set_defaults(func=cmd_ping)

    sp = add_command(
        sub,
        common,
        "password",
        description="'rotate' gives the mesh a new password, on one host: the mesh carries "
        "it to every peer (sealed on each connection). For WINDOW every peer accepts the "
        "old and the new one and re-keys its connections under the new one; then the old "
        "one is refused, with a reason that names the rotation. Survives restarts. Put the "
        "new file where each host's 'mesh launch' reads it before the window ends, for "
        "peers that are down now. 'retire' ends a move to certificates, on one host that has "
        "one: the mesh carries it to every router with a certificate, which refuses the "
        "password from then on (also after restarts) and closes the connections made by it.",
    )
    sp.add_argument("action", choices=["rotate", "retire"])
    sp.add_argument("--new-file", metavar="FILE", help="the new password (rotate)")
    sp.add_argument(
        "--window",
        default="1h",
        metavar="DURATION",
        help="how long the old password stays accepted: 90s, 30m, 2h (default: %(default)s)",
    )
    sp.set_defaults(func=cmd_password)
