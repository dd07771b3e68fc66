"""The ``mesh`` command line."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from meshrouter import __version__, api
from meshrouter.constants import CONTAINER_MTU, PORT
from meshrouter.netdev import delete_link, link_exists
from meshrouter.state import atomic_write, current_netns_name, default_state_dir, load_json

from . import attach as attach_mod
from .containers import docker_engine_available

DEFAULT_RANGE = "10.32.0.0/12"
LAUNCH_TIMEOUT = 30.0
DEFAULT_BUSY_POLL_US = 0
ROUTER_IMAGE = os.environ.get("MESH_IMAGE", f"meshrouter:{__version__}")


class CliError(Exception):
    """Printed as 'mesh: <message>' with exit status 1."""


# -- helpers ----------------------------------------------------------------


def _sock(state_dir: Path) -> Path:
    return state_dir / "router.sock"


def _router_call(state_dir: Path, request: dict[str, Any]) -> Any:
    try:
        return api.call(_sock(state_dir), request)
    except (FileNotFoundError, ConnectionRefusedError):
        raise CliError(
            f"no router is running (state dir {state_dir}): start one with 'mesh launch'"
        ) from None
    except (TimeoutError, OSError) as exc:
        raise CliError(f"cannot reach the router at {_sock(state_dir)}: {exc}") from None
    except RuntimeError as exc:
        raise CliError(str(exc)) from None


def _router_running(state_dir: Path) -> bool:
    try:
        api.call(_sock(state_dir), {"op": "status"}, timeout=2)
    except (OSError, RuntimeError, ValueError):
        return False
    return True


def _launch_config(state_dir: Path) -> dict[str, Any]:
    cfg = load_json(state_dir / "launch.json", {})
    return cfg if isinstance(cfg, dict) else {}


def _router_args(a: argparse.Namespace) -> list[str]:
    args = [
        "--state-dir",
        str(a.state_dir),
        "--bridge",
        a.bridge,
        "--port",
        str(a.port),
        "--ipalloc-range",
        a.ipalloc_range,
        "--mtu",
        str(a.mtu),
        "--log-level",
        a.log_level,
        "--listen",
        a.listen,
    ]
    if a.nickname:
        args += ["--nickname", a.nickname]
    if a.no_offload:
        args.append("--no-offload")
    if a.ipalloc_init:
        args += ["--ipalloc-init", str(a.ipalloc_init)]
    args += ["--metrics-addr", a.metrics_addr, "--log-format", a.log_format]
    args += ["--conn-limit", str(a.conn_limit)]
    args += ["--busy-poll-us", str(a.busy_poll_us)]
    if a.password_file:
        args += ["--password-file", os.path.abspath(a.password_file)]
    return args + list(a.peers)


# -- commands ---------------------------------------------------------------


def cmd_router(a: argparse.Namespace) -> int:
    from meshrouter.daemon import DaemonOptions, run

    return run(
        DaemonOptions(
            state_dir=a.state_dir,
            password_file=a.password_file,
            peers=list(a.peers),
            nickname=a.nickname or current_netns_name() or socket.gethostname(),
            bridge=a.bridge,
            port=a.port,
            listen=a.listen,
            ipalloc_range=a.ipalloc_range,
            mtu=a.mtu,
            log_level=a.log_level,
            offload=not a.no_offload,
            busy_poll_us=a.busy_poll_us,
            ipalloc_init=a.ipalloc_init,
            metrics_addr=a.metrics_addr,
            log_format=a.log_format,
            conn_limit=a.conn_limit,
        )
    )


def cmd_launch(a: argparse.Namespace) -> int:
    state_dir: Path = a.state_dir
    if _router_running(state_dir):
        raise CliError(
            f"a router is already running here (state dir {state_dir}): 'mesh stop' first"
        )
    if a.password_file is None and not os.environ.get("MESH_PASSWORD"):
        raise CliError("no mesh password: pass --password-file FILE (the same file on every host)")
    if a.password_file is not None and not os.path.isfile(a.password_file):
        raise CliError(f"password file {a.password_file} does not exist")
    _check_ranges(a)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(
        state_dir / "launch.json",
        json.dumps(
            {
                "bridge": a.bridge,
                "ipalloc_range": a.ipalloc_range,
                "mtu": a.mtu,
                "default_subnet": a.ipalloc_default_subnet,
            }
        ).encode(),
    )
    log_path = state_dir / "router.log"
    if docker_engine_available() and not a.local:
        proc = _launch_docker(a)
    else:
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "launcher", "router", *_router_args(a)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
            )
        atomic_write(state_dir / "router.pid", f"{proc.pid}\n".encode(), 0o644)
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None and not (docker_engine_available() and not a.local):
            tail = _log_tail(log_path)
            raise CliError(f"router exited during start-up: {tail}")
        if _router_running(state_dir):
            n = attach_mod.reattach_all(attach_mod.Registry(state_dir), a.bridge)
            status = _router_call(state_dir, {"op": "status"})
            extra = f", {n} container(s) re-attached" if n else ""
            print(
                f"router {status['name']} ({status['nickname']}) running on port {a.port}, "
                f"bridge {a.bridge}{extra}; log: {log_path}"
            )
            return 0
        time.sleep(0.1)
    raise CliError(f"router did not answer within {LAUNCH_TIMEOUT:.0f}s; see {log_path}")


def _check_ranges(a: argparse.Namespace) -> None:
    try:
        net = ipaddress.IPv4Network(a.ipalloc_range)
    except ValueError as exc:
        raise CliError(
            f"--ipalloc-range {a.ipalloc_range!r} is not a network like 10.32.0.0/12 ({exc})"
        ) from None
    if net.prefixlen > 30:
        raise CliError(f"--ipalloc-range {net} is too small: use a prefix of /30 or shorter")
    if a.ipalloc_default_subnet:
        try:
            sub = ipaddress.IPv4Network(a.ipalloc_default_subnet)
        except ValueError as exc:
            raise CliError(f"--ipalloc-default-subnet: {exc}") from None
        if not sub.subnet_of(net):
            raise CliError(f"--ipalloc-default-subnet {sub} is not inside --ipalloc-range {net}")


def _launch_docker(a: argparse.Namespace) -> subprocess.Popen[bytes]:
    """Run the router image with host networking (a Docker engine is present)."""
    state = str(a.state_dir)
    cmd = [
        "docker",
        "run",
        "-d",
        "--name",
        "meshrouter",
        "--restart",
        "unless-stopped",
        "--privileged",
        "--network",
        "host",
        "--pid",
        "host",
        "-v",
        f"{state}:{state}",
        "-v",
        "/run/netns:/run/netns:shared",
    ]
    if a.password_file:
        pw = os.path.abspath(a.password_file)
        cmd += ["-v", f"{pw}:{pw}:ro"]
    elif os.environ.get("MESH_PASSWORD"):
        cmd += ["-e", "MESH_PASSWORD"]
    cmd += [ROUTER_IMAGE, *_router_args(a)]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL)


def _log_tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    errors = [ln for ln in lines if " ERROR " in ln]
    return (errors or lines or ["(empty log)"])[-1]


def cmd_stop(a: argparse.Namespace) -> int:
    state_dir: Path = a.state_dir
    cfg = _launch_config(state_dir)
    bridge = str(cfg.get("bridge", "mesh"))
    pid = _read_pid(state_dir)
    if _router_running(state_dir):
        _router_call(state_dir, {"op": "stop"})
    elif pid is None and not link_exists(bridge):
        raise CliError(f"no router is running (state dir {state_dir})")
    if pid is not None:
        _wait_exit(pid, 10.0)
        (state_dir / "router.pid").unlink(missing_ok=True)
    if docker_engine_available() and not a.local:
        subprocess.run(["docker", "rm", "-f", "meshrouter"], capture_output=True, check=False)
    if delete_link(bridge):
        print(f"router stopped; bridge {bridge} removed")
    else:
        print("router stopped")
    return 0


def _read_pid(state_dir: Path) -> int | None:
    try:
        pid = int((state_dir / "router.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _wait_exit(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def cmd_connect(a: argparse.Namespace) -> int:
    for peer in a.peers:
        print(f"target {_router_call(a.state_dir, {'op': 'connect', 'peer': peer})} added")
    return 0


def cmd_forget(a: argparse.Namespace) -> int:
    for peer in a.peers:
        print(f"target {_router_call(a.state_dir, {'op': 'forget', 'peer': peer})} forgotten")
    return 0


def _attach_settings(a: argparse.Namespace) -> tuple[str, str, int]:
    if _router_running(a.state_dir):
        st = _router_call(a.state_dir, {"op": "status"})
        return st["bridge"], st["ipalloc_range"], int(st["mtu"])
    cfg = _launch_config(a.state_dir)
    if not cfg:
        raise CliError("no mesh on this host: run 'mesh launch' first")
    return cfg["bridge"], cfg["ipalloc_range"], int(cfg["mtu"])


class RouterIpam:
    """attach's AddressSource: the running router's IPAM over the local API."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def _call(self, request: dict[str, Any]) -> Any:
        try:
            return api.call(_sock(self.state_dir), request)
        except RuntimeError as exc:
            raise attach_mod.IpamRefused(str(exc)) from None
        except OSError:
            raise attach_mod.IpamRefused(
                "no router is running to hand out addresses: start one with 'mesh launch'"
            ) from None

    def allocate(self, container: str, ns_path: str, subnet: str | None) -> str:
        return str(
            self._call(
                {"op": "allocate", "container": container, "ns_path": ns_path, "subnet": subnet}
            )
        )

    def claim(self, cidr: str, container: str, ns_path: str) -> str:
        return str(
            self._call({"op": "claim", "cidr": cidr, "container": container, "ns_path": ns_path})
        )

    def release(self, container: str) -> None:
        try:
            self._call({"op": "release", "container": container})
        except attach_mod.IpamRefused as exc:
            print(f"mesh: warning: address of {container} not released: {exc}", file=sys.stderr)


def cmd_attach(a: argparse.Namespace) -> int:
    if len(a.args) not in (1, 2):
        raise CliError("usage: mesh attach [CIDR | net:SUBNET] CONTAINER")
    container = a.args[-1]
    cidr: str | None = None
    subnet: str | None = None
    bridge, mesh_range, mtu = _attach_settings(a)
    if len(a.args) == 2:
        spec = a.args[0]
        if spec.startswith("net:"):
            subnet = spec[4:]
            if subnet == "default":
                subnet = _launch_config(a.state_dir).get("default_subnet") or None
        else:
            cidr = spec
    else:
        subnet = _launch_config(a.state_dir).get("default_subnet") or None
    try:
        rec = attach_mod.attach(
            attach_mod.Registry(a.state_dir),
            container,
            cidr,
            bridge=bridge,
            mesh_range=mesh_range,
            mtu=mtu,
            ipam=RouterIpam(a.state_dir),
            subnet=subnet,
        )
    except attach_mod.AttachError as exc:
        raise CliError(str(exc)) from None
    print(rec.cidr)
    return 0


def cmd_detach(a: argparse.Namespace) -> int:
    try:
        rec = attach_mod.detach(
            attach_mod.Registry(a.state_dir), a.container, RouterIpam(a.state_dir)
        )
    except attach_mod.AttachError as exc:
        raise CliError(str(exc)) from None
    if rec is None:
        raise CliError(f"{a.container} is not attached to the mesh")
    print(f"{a.container} detached{' (' + rec.cidr + ')' if rec.cidr else ''}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    st = _router_call(a.state_dir, {"op": "status"})
    st["attached"] = [
        asdict(r)
        for r in sorted(attach_mod.Registry(a.state_dir).read().values(), key=lambda r: r.container)
    ]
    print(json.dumps(st, indent=2))
    return 0


def cmd_rmpeer(a: argparse.Namespace) -> int:
    print(_router_call(a.state_dir, {"op": "rmpeer", "peer": a.peer}))
    return 0


def cmd_ps(a: argparse.Namespace) -> int:
    records = attach_mod.Registry(a.state_dir).read()
    rows = [
        [r.container, r.kind, r.mac, r.cidr, "up" if link_exists(r.host_veth) else "gone"]
        for r in sorted(records.values(), key=lambda r: r.container)
    ]
    _table(["CONTAINER", "KIND", "MAC", "ADDRESS", "LINK"], rows)
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    st = _router_call(a.state_dir, {"op": "status"})
    what = a.what or "all"
    if a.json:
        print(json.dumps(st, indent=2))
        return 0
    conns = st["connections"]
    if what == "all":
        est = sum(1 for c in conns if c["state"] == "established")
        ciphers = sorted({c["cipher"] for c in conns if c.get("cipher")})
        print(f"        Version: {st['version']}")
        print(f"           Peer: {st['name']} ({st['nickname']})")
        print(f"     Encryption: enabled{' (' + ', '.join(ciphers) + ')' if ciphers else ''}")
        print(f"           Port: {st['port']} (TCP control, UDP data)")
        print(f"         Bridge: {st['bridge']} (tap {st['tap']}), container MTU {st['mtu']}")
        print(f"       IP range: {st['ipalloc_range']}")
        print(f"    Connections: {len(conns)} ({est} established)")
        reachable = sum(1 for p in st["peers"] if p["reachable"])
        print(f"          Peers: {len(st['peers'])} known ({reachable} reachable, self included)")
        print(f"        Targets: {len(st['targets'])}")
        print(f"  MACs learned : {st['macs']}")
        if st["drops"]:
            print("   Dropped: " + ", ".join(f"{k}={v}" for k, v in sorted(st["drops"].items())))
        print()
    if what in ("all", "connections"):
        rows = [
            [
                "->" if c["direction"] == "outbound" else "<-",
                c["address"],
                c.get("peer") or "-",
                c.get("nickname") or "-",
                c["state"],
                c.get("cipher", "-") if c["encrypted"] else "not encrypted",
            ]
            for c in conns
        ]
        _table(["", "ADDRESS", "PEER", "NICKNAME", "STATE", "ENCRYPTION"], rows)
    if what in ("all", "peers"):
        if what == "all":
            print()
        rows = []
        for p in st["peers"]:
            links = ", ".join(
                ("->" if c["outbound"] else "<-") + c["peer"] + ("" if c["established"] else "?")
                for c in p["connections"]
            )
            reach = (
                "self"
                if p["peer"] == st["name"]
                else (
                    ("via " + p["via"])
                    if p["via"]
                    else ("direct" if p["reachable"] else "unreachable")
                )
            )
            rows.append([p["peer"], p["nickname"], reach, links or "-"])
        _table(["PEER", "NICKNAME", "ROUTE", "CONNECTIONS"], rows)
    if what == "ipam":
        ip = st["ipam"]
        print(
            f"range {ip['range']}: "
            + (
                "ring agreed"
                if ip["ready"]
                else f"waiting for {ip['quorum']} of {ip['init_count']} initial peers"
            )
        )
        rows = [
            [
                s_["peer"],
                s_["nickname"],
                str(s_["owned"]),
                "-" if s_["used"] is None else str(s_["used"]),
                "-" if s_["free"] is None else str(s_["free"]),
            ]
            for s_ in ip["shares"]
        ]
        _table(["PEER", "NICKNAME", "OWNED", "USED", "FREE"], rows)
        for al in ip["allocations"]:
            print(f"  {al['address']:15s} {al['container'].split('/', 1)[-1]}")
        return 0
    if what in ("all", "targets"):
        if what == "all":
            print()
        rows = [
            [
                t["address"] + (" (discovered)" if t.get("discovered") else ""),
                t["state"],
                t["peer"] or "-",
                str(t["attempts"]),
                t["last_error"] or "-",
                f"{t['next_try_in']}s" if t["next_try_in"] is not None else "-",
            ]
            for t in st["targets"]
        ]
        _table(["TARGET", "STATE", "PEER", "TRIES", "LAST ERROR", "NEXT TRY"], rows)
    return 0


def _table(header: list[str], rows: list[list[str]]) -> None:
    """Aligned columns; the header in bold on a terminal, plain when piped."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    bold = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    for k, row in enumerate([header, *rows]):
        line = "  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)).rstrip()
        print(f"\033[1m{line}\033[0m" if bold and k == 0 else line)


# -- argument parsing -----------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mesh",
        description="meshrouter: an encrypted userspace mesh network for containers.",
        epilog="Each host runs 'mesh launch'; containers join with 'mesh attach'. "
        "State lives in $MESH_STATE_DIR, else /var/lib/meshrouter "
        "(a netns-NAME subfolder inside a named network namespace).",
    )
    p.add_argument("--version", action="version", version=f"meshrouter {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="router state directory (default: $MESH_STATE_DIR, else /var/lib/meshrouter, "
        "or /var/lib/meshrouter/netns-NAME inside a named network namespace)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def router_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--password-file",
            metavar="FILE",
            help="file holding the mesh password, the same on every host (or set MESH_PASSWORD)",
        )
        sp.add_argument("--bridge", default="mesh", help="bridge name (default: mesh)")
        sp.add_argument(
            "--port", type=int, default=PORT, help=f"TCP and UDP port (default: {PORT})"
        )
        sp.add_argument(
            "--listen",
            default="0.0.0.0",
            metavar="ADDR",
            help="address to listen on (default: all)",
        )
        sp.add_argument("--nickname", help="human name of this peer (default: netns or host name)")
        sp.add_argument(
            "--ipalloc-range",
            default=DEFAULT_RANGE,
            metavar="CIDR",
            help=f"address range of the mesh (default: {DEFAULT_RANGE})",
        )
        sp.add_argument(
            "--mtu",
            type=int,
            default=CONTAINER_MTU,
            help=f"container MTU (default: {CONTAINER_MTU}, what the tunnel carries)",
        )
        sp.add_argument(
            "--log-level", default="info", choices=["debug", "info", "warning", "error"]
        )
        sp.add_argument(
            "--metrics-addr",
            default="127.0.0.1:6782",
            metavar="HOST:PORT",
            help="serve Prometheus metrics at http://HOST:PORT/metrics "
            "(default: 127.0.0.1:6782; empty to turn off)",
        )
        sp.add_argument(
            "--log-format", default="text", choices=["text", "json"], help="log line format"
        )
        sp.add_argument(
            "--conn-limit",
            type=int,
            default=100,
            metavar="N",
            help="most control connections at once, handshakes included (default: 100)",
        )
        sp.add_argument(
            "--ipalloc-init",
            type=int,
            default=0,
            metavar="N",
            help="how many peers the mesh starts with; addresses are handed out once "
            "N/2+1 of them are connected (default: the PEERs given + 1)",
        )
        sp.add_argument(
            "--ipalloc-default-subnet",
            metavar="CIDR",
            help="subnet of the range that 'mesh attach CONTAINER' allocates from "
            "(default: the whole range)",
        )
        sp.add_argument(
            "--busy-poll-us",
            type=int,
            default=DEFAULT_BUSY_POLL_US,
            metavar="US",
            help="after forwarding, keep polling this many microseconds before sleeping "
            f"(lower latency, some CPU; 0 turns it off; default: {DEFAULT_BUSY_POLL_US})",
        )
        sp.add_argument(
            "--no-offload",
            action="store_true",
            help="turn off TAP segmentation/checksum offload and UDP GSO/GRO "
            "(slower; for kernels or paths that mishandle them)",
        )
        sp.add_argument(
            "peers", nargs="*", metavar="PEER", help="peers to connect to: HOST or HOST:PORT"
        )

    sp = sub.add_parser(
        "launch",
        parents=[common],
        help="start the router in the background",
        description="Create the bridge and TAP, start the router in the "
        "background and return once it listens.",
    )
    router_opts(sp)
    sp.add_argument(
        "--local",
        action="store_true",
        help="run the router as a local process even if a Docker engine is present",
    )
    sp.set_defaults(func=cmd_launch)

    sp = sub.add_parser(
        "router",
        parents=[common],
        help="run the router in the foreground",
        description="Run the router in the foreground (for the container "
        "image and service managers). Stops on SIGTERM/SIGINT.",
    )
    router_opts(sp)
    sp.set_defaults(func=cmd_router)

    sp = sub.add_parser("connect", parents=[common], help="add connection targets at run time")
    sp.add_argument("peers", nargs="+", metavar="PEER")
    sp.set_defaults(func=cmd_connect)

    sp = sub.add_parser(
        "forget", parents=[common], help="remove connection targets (and drop their connections)"
    )
    sp.add_argument("peers", nargs="+", metavar="PEER")
    sp.set_defaults(func=cmd_forget)

    sp = sub.add_parser(
        "attach",
        parents=[common],
        help="attach a container: mesh attach CIDR CONTAINER",
        description="Give CONTAINER (a named network namespace, or a Docker "
        "container when a Docker engine is present) an interface 'ethwe' on the "
        "mesh with address CIDR (e.g. 10.32.0.5/12).",
    )
    sp.usage = "mesh attach [-h] [--state-dir DIR] [CIDR | net:SUBNET] CONTAINER"
    sp.add_argument("args", nargs="+", metavar="[CIDR] CONTAINER", help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_attach)

    sp = sub.add_parser("detach", parents=[common], help="detach a container from the mesh")
    sp.add_argument("container", metavar="CONTAINER")
    sp.set_defaults(func=cmd_detach)

    sp = sub.add_parser(
        "status", parents=[common], help="show the router, its connections and targets"
    )
    sp.add_argument("what", nargs="?", choices=["peers", "connections", "targets", "ipam"])
    sp.add_argument("--json", action="store_true", help="print everything as JSON")
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser(
        "report",
        parents=[common],
        help="everything the router knows, as JSON",
        description="Print status, connections, peers, targets, IPAM, counters, drops "
        "and this host's attached containers as one JSON document.",
    )
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser(
        "rmpeer",
        parents=[common],
        help="reclaim the address share of a dead peer",
        description="Take over the IP address share of PEER (name or nickname), which must "
        "be gone for good: its addresses become this host's to give out.",
    )
    sp.add_argument("peer", metavar="PEER")
    sp.set_defaults(func=cmd_rmpeer)

    sp = sub.add_parser("ps", parents=[common], help="list containers attached on this host")
    sp.set_defaults(func=cmd_ps)

    sp = sub.add_parser("stop", parents=[common], help="stop the router and remove the bridge")
    sp.add_argument("--local", action="store_true", help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_stop)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.state_dir is None:
        args.state_dir = default_state_dir()
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"mesh: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
