"""mesh status, report, version, doctor: what the router and this host say."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from launcher import views
from launcher.common import (
    ROUTER_ERRORS,
    _by_name,
    _first_error,
    _launch_config,
    _router_running,
    _status,
    add_command,
)
from launcher.parser import Parser
from meshrouter import __version__


def cmd_report(a: argparse.Namespace) -> int:
    from dataclasses import asdict

    from meshrouter.attachments import attach as attach_mod

    if not _router_running(a.state_dir):
        down = _down(a.state_dir)
        down["attached"] = [
            asdict(r)
            for r in sorted(attach_mod.Registry(a.state_dir).read().values(), key=_by_name)
        ]
        print(json.dumps(down, indent=2))
        return 1
    st: dict[str, Any] = dict(_status(a.state_dir))
    st["running"] = True
    st["attached"] = [
        asdict(r)
        for r in sorted(attach_mod.Registry(a.state_dir).read().values(), key=lambda r: r.container)
    ]
    print(json.dumps(st, indent=2))
    return 0


def _down(state_dir: Path) -> dict[str, Any]:
    """What can be said of this host's mesh when no router answers."""
    from meshrouter.attachments import attach as attach_mod

    errors = state_dir / ROUTER_ERRORS
    last = _first_error(errors) if errors.exists() and errors.stat().st_size else None
    return {
        "running": False,
        "state_dir": str(state_dir),
        "error": f"no router is running (state dir {state_dir}): start one with 'mesh launch'",
        "last_error": last,  # what stopped the router of the last launch, if it failed
        "launch": _launch_config(state_dir),
        "attached": len(attach_mod.Registry(state_dir).read()),
    }


def cmd_version(a: argparse.Namespace) -> int:
    from meshrouter.base.constants import protocol_versions

    mine = {
        "version": __version__,
        "protocol": protocol_versions(),
        "dataplane_built": _dataplane_built(),
        "python": sys.version.split()[0],
    }
    router: dict[str, Any] | None = None
    if _router_running(a.state_dir):
        st = _status(a.state_dir)
        router = {
            "version": st["version"],
            "dataplane": st["dataplane"],
            "dataplane_built": st["dataplane_built"],
        }
    if a.json:
        print(json.dumps({"client": mine, "router": router}, indent=2))
        return 0
    built = "built" if mine["dataplane_built"] else "not built (the Python loop runs)"
    print(f"meshrouter {__version__}")
    print(f"  protocol versions {mine['protocol']}")
    print(f"  C data plane {built}")
    print(f"  Python {mine['python']} ({sys.executable})")
    if router is None:
        print("  router: not running here")
    else:
        print(f"  router: meshrouter {router['version']}, data plane: {router['dataplane']}")
    return 0


def _dataplane_built() -> bool:
    import importlib.util

    return importlib.util.find_spec("meshrouter.dataplane._dataplane") is not None


def cmd_status(a: argparse.Namespace) -> int:
    if a.json and not _router_running(a.state_dir):
        print(json.dumps(_down(a.state_dir), indent=2))
        return 1
    st = _status(a.state_dir)
    if a.json:
        print(json.dumps(st, indent=2))
    else:
        views.status(st, a.what or "all")
    return 0


def cmd_doctor(a: argparse.Namespace) -> int:
    from launcher import doctor

    st = _status(a.state_dir)  # no router: says so, exit 1
    findings = doctor.diagnose(st, doctor.gather(st))
    for f in findings:
        if f.level != doctor.OK or a.verbose:
            print(f.line())
    failed = sum(f.level == doctor.FAIL for f in findings)
    warned = sum(f.level == doctor.WARN for f in findings)
    print(f"{failed} problem(s), {warned} warning(s)" if failed or warned else "all well")
    return 1 if failed else 0


def register(
    sub: argparse._SubParsersAction[Parser],
    common: Parser,
    config_defaults: dict[str, Any] | None,
) -> None:
    """Add this group's commands to ``sub``."""
    sp = add_command(sub, common, "status")
    sp.add_argument(
        "what", nargs="?", choices=["peers", "connections", "targets", "ipam", "dns", "expose"]
    )
    sp.add_argument("--json", action="store_true", help="print everything as JSON")
    sp.set_defaults(func=cmd_status)

    sp = add_command(
        sub,
        common,
        "report",
        description="Print status, connections, peers, targets, IPAM, counters, drops "
        "and this host's attached containers as one JSON document.",
    )
    sp.set_defaults(func=cmd_report)

    sp = add_command(
        sub,
        common,
        "version",
        description="Print this client's versions (meshrouter, the protocol versions it "
        "speaks, whether the C data plane is built, Python), and the running router's.",
    )
    sp.add_argument("--json", action="store_true", help="as JSON")
    sp.set_defaults(func=cmd_version)

    sp = add_command(
        sub,
        common,
        "doctor",
        description="Checks the router, the bridge and TAP, /dev/net/tun, kernel offloads, "
        "nftables, address agreement, DNS, expose, every target (TCP reachability, password) "
        "and connection (UDP both ways, path MTU, clock skew, version), and unreachable "
        "peers. One line per problem; exit status 0 when nothing failed, 1 otherwise.",
    )
    sp.add_argument("-v", "--verbose", action="store_true", help="print what is fine too")
    sp.set_defaults(func=cmd_doctor)
