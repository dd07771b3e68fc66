"""mesh launch, router, stop, reset: the router's life on this host."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launcher.common import (
    CONTAINER,
    ROUTER_ERRORS,
    ROUTER_IMAGE,
    _ask,
    _docker,
    _first_error,
    _launch_config,
    _options,
    _read_pid,
    _router_options,
    _router_running,
    _status,
    _wait_exit,
    add_command,
)
from launcher.parser import CliError, Parser
from meshrouter.attachments import attach as attach_mod
from meshrouter.base import v6map
from meshrouter.base.constants import FASTPATH_DEVICE
from meshrouter.contract import apiclient, config
from meshrouter.contract import requests as rq
from meshrouter.contract.state import (
    atomic_write,
    password_from_env,
    read_password,
    take_bridge_made,
)
from meshrouter.engines import dockerapi
from meshrouter.engines.containers import docker_engine_available
from meshrouter.host import guard
from meshrouter.host.netdev import delete_bridge_made, delete_link, link_exists

LAUNCH_TIMEOUT = 30.0


ROUTER_CAPS = ("NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "SYS_PTRACE", "SYS_ADMIN")


def _router_args(a: argparse.Namespace) -> list[str]:
    """What 'mesh launch' runs the router with: a local router logs to
    STATE_DIR/router.log unless told otherwise."""
    opts = _options(a)
    if not opts.log_file and getattr(a, "engine", "local") == "local":
        opts = dataclasses.replace(opts, log_file=str(a.state_dir / "router.log"))
    return ["--state-dir", str(a.state_dir), *config.to_argv(opts)]


def cmd_router(a: argparse.Namespace) -> int:
    """The daemon in this process's place (same pid for a service manager or a
    container runtime): the client imports none of the router's packages."""
    argv = [*apiclient.daemon_argv(), "--state-dir", str(a.state_dir), *config.to_argv(_options(a))]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)


def cmd_launch(a: argparse.Namespace) -> int:
    state_dir: Path = a.state_dir
    router_args = _router_args(a)
    if _router_running(state_dir):
        if _launch_config(state_dir).get("router_args") == router_args:
            st = _status(state_dir)
            print(f"router {st['name']} ({st['nickname']}) is already running with these options")
            return 0  # idempotent: a service manager or boot script may launch again
        raise CliError(
            f"a router is already running here (state dir {state_dir}) with other options: "
            "'mesh stop' first"
        )
    preflight(a)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_writable(state_dir)
    launch_cfg = {
        "bridge": a.bridge,
        "ipalloc_range": a.ipalloc_range,
        "ipalloc_range6": a.ipalloc_range6,
        "mtu": a.mtu,
        "default_subnet": a.ipalloc_default_subnet,
        "engine": a.engine,
        "trusted_subnets": a.trusted_subnets,
        "router_args": router_args,
    }
    proc, where = _start(a, state_dir, router_args)
    _wait_until_serving(a, state_dir, proc, where)
    atomic_write(state_dir / "launch.json", json.dumps(launch_cfg).encode())
    n = attach_mod.reattach_all(attach_mod.Registry(state_dir), a.bridge)
    status = _status(state_dir)
    extra = f", {n} container(s) re-attached" if n else ""
    print(
        f"router {status['name']} ({status['nickname']}) running on port {a.port}, "
        f"bridge {a.bridge}{extra}, {where}"
    )
    return 0


def _start(
    a: argparse.Namespace, state_dir: Path, router_args: list[str]
) -> tuple[subprocess.Popen[bytes] | None, str]:
    """The router, started: a local process (its stderr in ROUTER_ERRORS),
    or the container; and where its log is."""
    if a.engine == "docker":
        _launch_docker(a)
        return None, f"as container {CONTAINER} (docker); logs: docker logs {CONTAINER}"
    with open(state_dir / ROUTER_ERRORS, "wb") as errf:  # this run's errors only
        proc = subprocess.Popen(
            [*apiclient.daemon_argv(), *router_args],
            stdin=subprocess.DEVNULL,
            stdout=errf,
            stderr=errf,
            cwd="/",
            start_new_session=True,
        )
    return proc, f"as a local process; log: {state_dir / 'router.log'}"


def _wait_until_serving(
    a: argparse.Namespace, state_dir: Path, proc: subprocess.Popen[bytes] | None, where: str
) -> None:
    """Until the router answers; a router that exits or never answers is
    undone whole (its bridge, its pid file) and the launch fails saying why."""
    errors = state_dir / ROUTER_ERRORS
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while time.monotonic() < deadline:
        failed = None
        if proc is not None and proc.poll() is not None:
            failed = f"router exited during start-up: {_first_error(errors)}"
        elif proc is None and not _container_running():
            failed = f"router container exited during start-up: {_container_log_tail()}"
        if failed is not None:
            _undo_launch(state_dir, a.bridge)
            raise CliError(failed)
        if _router_running(state_dir):
            return
        time.sleep(0.1)
    if proc is not None:
        proc.kill()
        proc.wait()
    _undo_launch(state_dir, a.bridge)
    raise CliError(
        f"router did not answer within {LAUNCH_TIMEOUT:.0f}s and was stopped; "
        f"see {where.split('; ')[-1]}"
    )


def preflight(a: argparse.Namespace) -> None:
    """What a launch needs, checked before anything is made: one line for
    the first thing that is wrong."""
    from meshrouter.host import preflight as pre  # sockets and files: only for launch

    try:
        import time

        from meshrouter.contract.certfiles import launch_credentials

        creds = launch_credentials(a.cert, a.key, a.ca, a.nickname, time.time())
        if creds is None or a.password_file or password_from_env():
            read_password(a.password_file)  # with a certificate too: migrating, both accepted
        pre.check_names(a.bridge, a.tap)
        pre.check_listen(a.listen, a.port)
        for peer in a.peers:
            pre.check_peer(peer, a.port)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    _check_ranges(a)


PROBE_BYTES = 256 << 10  # what a router writes in its first moments (logs, ipam.db, keys), and more


def _check_writable(state_dir: Path) -> None:
    """The state directory takes a file: a router started on a full or
    read-only one could not say why it stopped (its own error output goes
    there too)."""
    probe = state_dir / ".launch-probe"
    try:
        atomic_write(probe, bytes(PROBE_BYTES))
    except OSError as exc:
        raise CliError(
            f"cannot launch: the state directory {state_dir} is full or read-only "
            f"({os.strerror(exc.errno or 0)}): free space there, or give another with --state-dir"
        ) from None
    finally:
        probe.unlink(missing_ok=True)


def _undo_launch(state_dir: Path, bridge: str) -> None:
    """A launch that failed leaves nothing: the bridge the router made this
    time, its pid file."""
    (state_dir / "router.pid").unlink(missing_ok=True)
    delete_bridge_made(state_dir, bridge)


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
    try:
        v6map.parse_range6(a.ipalloc_range6, str(net))
    except v6map.Range6Error as exc:
        raise CliError(str(exc)) from None
    try:
        config.parse_subnets(a.trusted_subnets)
        config.parse_public(a.nat_public, a.port)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _container_running() -> bool:
    out = _docker("inspect", "--format", "{{.State.Running}}", CONTAINER)
    return out.returncode == 0 and out.stdout.strip() == "true"


def _container_log_tail() -> str:
    out = _docker("logs", "--tail", "5", CONTAINER)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    return lines[-1] if lines else f"see 'docker logs {CONTAINER}'"


def _launch_docker(a: argparse.Namespace) -> None:
    """Run the router image with host networking and the host's PID namespace.
    A container left by an earlier launch (no router answers: we checked) is
    removed first; a failing 'docker run' is reported at once, with nothing left.

    Not privileged: NET_ADMIN (bridge, TAP, veths, nftables), NET_RAW (DNS
    sockets bound to the bridge), NET_BIND_SERVICE (DNS on port 53),
    SYS_PTRACE (to see containers' namespaces under /proc), SYS_ADMIN (to
    enter them when re-attaching a restarted container), and the TUN device."""
    if not docker_engine_available():
        raise CliError("--engine docker, but no Docker engine answers ('docker version')")
    _docker("rm", "-f", CONTAINER)
    state = str(a.state_dir)
    cmd = [
        "run",
        "-d",
        "--name",
        CONTAINER,
        "--restart",
        "unless-stopped",
        "--network",
        "host",
        "--pid",
        "host",
        "--cap-drop",
        "ALL",
        *[f"--cap-add={c}" for c in ROUTER_CAPS],
        "--security-opt",
        "apparmor=unconfined",
        "--device",
        "/dev/net/tun",
        "-v",
        f"{state}:{state}",
        "-v",
        "/run/netns:/run/netns:shared",
    ]
    engine_sock = dockerapi.socket_path()
    if engine_sock:  # the router follows the engine's events (engine.py)
        cmd += ["-v", f"{engine_sock}:/var/run/docker.sock"]
    if a.docker_plugin:  # Docker's plugin directory: the 'mesh' driver's socket
        plugins = os.path.dirname(a.docker_plugin)
        cmd += ["-v", f"{plugins}:{plugins}"]
    if a.password_file:
        pw = os.path.abspath(a.password_file)
        cmd += ["-v", f"{pw}:{pw}:ro"]
    elif password_from_env():
        cmd += ["-e", "MESH_PASSWORD"]
    for path in (a.cert, a.key, a.ca):
        if path:
            cmd += ["-v", f"{os.path.abspath(path)}:{os.path.abspath(path)}:ro"]
    cmd += [ROUTER_IMAGE, "router", *_router_args(a)]
    out = _docker(*cmd)
    if out.returncode != 0:
        _docker("rm", "-f", CONTAINER)
        lines = [ln.strip() for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
        hint = ("Run '", "See '")  # the client's advice, not the reason
        why = [ln for ln in lines if not ln.startswith(hint)] or lines or ["no reason given"]
        raise CliError(f"docker run {ROUTER_IMAGE} failed: {why[-1]}")


def cmd_stop(a: argparse.Namespace) -> int:
    state_dir: Path = a.state_dir
    cfg = _launch_config(state_dir)
    bridge = str(cfg.get("bridge", "mesh"))
    pid = _read_pid(state_dir)
    container = cfg.get("engine") == "docker" and _docker("inspect", CONTAINER).returncode == 0
    if _router_running(state_dir):
        _ask(state_dir, rq.Stop())
    elif pid is None and not link_exists(bridge) and not container:
        print(f"no router is running (state dir {state_dir}): nothing to stop")
        return 0
    if pid is not None:
        _wait_exit(pid, 10.0)
        (state_dir / "router.pid").unlink(missing_ok=True)
    if container:  # only a container our launch made, running or left over
        _docker("rm", "-f", CONTAINER)
    if cfg.get("trusted_subnets") and link_exists(FASTPATH_DEVICE):
        delete_link(FASTPATH_DEVICE)  # left by a router that did not stop cleanly
    if not link_exists(bridge):
        print("router stopped")
    elif not take_bridge_made(state_dir, bridge):
        print(f"router stopped; bridge {bridge} kept (it was there before 'mesh launch')")
    elif delete_link(bridge):
        print(f"router stopped; bridge {bridge} removed")
    else:
        print("router stopped")
    return 0


def cmd_reset(a: argparse.Namespace) -> int:
    """Stop the router for good: share handed over, bridge, attachments and state gone."""
    state_dir: Path = a.state_dir
    cfg = _launch_config(state_dir)
    bridge = str(cfg.get("bridge", "mesh"))
    if _router_running(state_dir):
        print(_ask(state_dir, rq.Reset()))
        pid = _read_pid(state_dir)
        if pid is not None:
            _wait_exit(pid, 10.0)
    else:
        print(
            "mesh: warning: no router running: its address share stays with this peer "
            "until another peer runs 'mesh rmpeer'",
            file=sys.stderr,
        )
    registry = attach_mod.Registry(state_dir)
    for rec in registry.read().values():
        delete_link(rec.host_veth)
        attach_mod.remove_resolv_conf(rec)
    guard.remove()
    if cfg.get("engine") == "docker":
        _docker("rm", "-f", CONTAINER)
    if delete_bridge_made(state_dir, bridge):
        print(f"bridge {bridge} removed")
    shutil.rmtree(state_dir, ignore_errors=True)
    print(f"state {state_dir} removed")
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
        "launch",
        description="Create the bridge and TAP, start the router in the "
        "background (a local process, or with --engine docker a container) and return "
        "once it listens.",
    )
    _router_options(sp, config_defaults)
    sp.add_argument(
        "--engine",
        choices=("local", "docker"),
        default="local",
        help="run the router as a local process (default), or as the container "
        f"'{CONTAINER}' from image {ROUTER_IMAGE} (MESH_IMAGE) on the Docker engine "
        "(host network and PID namespace); launch says which",
    )
    sp.add_argument("--local", action="store_true", help=argparse.SUPPRESS)  # the default now
    sp.set_defaults(func=cmd_launch)

    sp = add_command(
        sub,
        common,
        "router",
        description="Run the router in the foreground (for the container "
        "image and service managers). Stops on SIGTERM/SIGINT.",
    )
    _router_options(sp, config_defaults)
    sp.set_defaults(func=cmd_router)

    sp = add_command(
        sub,
        common,
        "reset",
        description="Stop the router after handing this peer's address share to a "
        "connected peer (no 'mesh rmpeer' needed later), then remove what 'expose' made, "
        "the containers' links, the bridge (if launch made it) and the state directory.",
    )
    sp.set_defaults(func=cmd_reset)

    sp = add_command(sub, common, "stop")
    sp.set_defaults(func=cmd_stop)
