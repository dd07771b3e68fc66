"""The ``mesh`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from launcher import attach as attach_mod
from launcher import guard, views
from launcher.containers import ContainerError, docker_endpoints, docker_engine_available, resolve
from launcher.interrupts import Interrupts
from meshrouter import __version__
from meshrouter.base.constants import FASTPATH_DEVICE
from meshrouter.contract import apiclient, config
from meshrouter.contract import requests as rq
from meshrouter.contract.config import RouterOptions
from meshrouter.contract.state import (
    atomic_write,
    default_state_dir,
    load_json,
    password_from_env,
    read_password,
    take_bridge_made,
)
from meshrouter.contract.status import RouterStatus
from meshrouter.engines import dockerapi
from meshrouter.host.netdev import delete_bridge_made, delete_link, link_exists

LAUNCH_TIMEOUT = 30.0
ROUTER_IMAGE = os.environ.get("MESH_IMAGE", f"meshrouter:{__version__}")
CONTAINER = "meshrouter"  # the router's container when launched with --engine docker
ROUTER_CAPS = ("NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "SYS_PTRACE", "SYS_ADMIN")

R = TypeVar("R")


class CliError(Exception):
    """Printed as 'mesh: <message>' with exit status 1."""


class Parser(argparse.ArgumentParser):
    """A bad argument is one line that says where help is, not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


# -- helpers ----------------------------------------------------------------


def _ask(state_dir: Path, request: rq.Request[R]) -> R:
    """The router's answer; its refusal (or its absence) as the command's error."""
    try:
        return apiclient.ask(state_dir, request)
    except apiclient.ApiError as exc:
        raise CliError(str(exc)) from None


def _status(state_dir: Path) -> RouterStatus:
    st = _ask(state_dir, rq.Status())
    return st


def _router_running(state_dir: Path) -> bool:
    try:
        apiclient.ask(state_dir, rq.Status(), timeout=2)
    except (OSError, apiclient.ApiError):
        return False
    return True


def _launch_config(state_dir: Path) -> dict[str, Any]:
    cfg = load_json(state_dir / "launch.json", {})
    return cfg if isinstance(cfg, dict) else {}


def _options(a: argparse.Namespace) -> RouterOptions:
    """The router's options, with every path absolute (it runs in /)."""
    opts = config.from_namespace(a)
    paths = {
        name: os.path.abspath(value)
        for name in ("password_file", "log_file", "docker_plugin")
        if (value := getattr(opts, name))
    }
    return dataclasses.replace(opts, **paths)


def _router_args(a: argparse.Namespace) -> list[str]:
    """What 'mesh launch' runs the router with: a local router logs to
    STATE_DIR/router.log unless told otherwise."""
    opts = _options(a)
    if not opts.log_file and getattr(a, "engine", "local") == "local":
        opts = dataclasses.replace(opts, log_file=str(a.state_dir / "router.log"))
    return ["--state-dir", str(a.state_dir), *config.to_argv(opts)]


# -- commands ---------------------------------------------------------------


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
    launch_cfg = {
        "bridge": a.bridge,
        "ipalloc_range": a.ipalloc_range,
        "mtu": a.mtu,
        "default_subnet": a.ipalloc_default_subnet,
        "engine": a.engine,
        "trusted_subnets": a.trusted_subnets,
        "router_args": router_args,
    }
    errors = state_dir / ROUTER_ERRORS
    if a.engine == "docker":
        _launch_docker(a)
        where = f"as container {CONTAINER} (docker); logs: docker logs {CONTAINER}"
        proc = None
    else:
        with open(errors, "wb") as errf:  # this run's errors only: never an older run's
            proc = subprocess.Popen(
                [*apiclient.daemon_argv(), *router_args],
                stdin=subprocess.DEVNULL,
                stdout=errf,
                stderr=errf,
                cwd="/",
                start_new_session=True,
            )
        where = f"as a local process; log: {state_dir / 'router.log'}"
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
            atomic_write(state_dir / "launch.json", json.dumps(launch_cfg).encode())
            n = attach_mod.reattach_all(attach_mod.Registry(state_dir), a.bridge)
            status = _status(state_dir)
            extra = f", {n} container(s) re-attached" if n else ""
            print(
                f"router {status['name']} ({status['nickname']}) running on port {a.port}, "
                f"bridge {a.bridge}{extra}, {where}"
            )
            return 0
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
        read_password(a.password_file)
        pre.check_names(a.bridge, a.tap)
        pre.check_listen(a.listen, a.port)
        for peer in a.peers:
            pre.check_peer(peer, a.port)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    _check_ranges(a)


def _undo_launch(state_dir: Path, bridge: str) -> None:
    """A launch that failed leaves nothing: the bridge the router made this
    time, its pid file."""
    (state_dir / "router.pid").unlink(missing_ok=True)
    delete_bridge_made(state_dir, bridge)


ROUTER_ERRORS = "router.err"  # the router's stderr of its last launch: errors and crashes


def _first_error(path: Path) -> str:
    """Why the router of this launch stopped: the first error it wrote (the
    exception, when it crashed with a traceback)."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    if not lines:
        return "(no error output)"
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]


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
        config.parse_subnets(a.trusted_subnets)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(["docker", *args], 1, "", str(exc))


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
        print(f"target {_ask(a.state_dir, rq.Connect(peer))} added")
    return 0


def cmd_forget(a: argparse.Namespace) -> int:
    for peer in a.peers:
        print(f"target {_ask(a.state_dir, rq.Forget(peer))} forgotten")
    return 0


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


def cmd_report(a: argparse.Namespace) -> int:
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
    try:
        password = read_password(a.new_file).decode()
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CliError(f"cannot read the new password from {a.new_file}: {exc}") from None
    print(_ask(a.state_dir, rq.PasswordRotate(password, _duration(a.window))))
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


def _by_name(r: attach_mod.Attachment) -> str:
    return r.container


def _ps_record(r: attach_mod.Attachment) -> dict[str, Any]:
    """One attachment for 'mesh ps --json': its record and the state of its link."""
    link = r.state or ("up" if link_exists(r.host_veth) else "gone")
    return {**asdict(r), "link": link}


def _down(state_dir: Path) -> dict[str, Any]:
    """What can be said of this host's mesh when no router answers."""
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


# -- DNS ------------------------------------------------------------------------------


def _split_dns_args(a: argparse.Namespace) -> tuple[list[str], str | None]:
    """``ADDR... [CONTAINER]``: the addresses, and the container if the last
    argument is not an address."""
    args = list(a.args)
    container = None
    if args:
        try:
            ipaddress.IPv4Interface(args[-1])
        except ValueError:
            container = args.pop()
    for x in args:
        try:
            ipaddress.IPv4Interface(x)
        except ValueError:
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


# -- host access -----------------------------------------------------------------------


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


# -- CNI --------------------------------------------------------------------------------


def cmd_setup_cni(a: argparse.Namespace) -> int:
    """Install the plugin where a runtime looks for it, and a conflist naming it."""
    bin_dir, conf_dir = Path(a.bin_dir), Path(a.conf_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    conf_dir.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent  # where the launcher package lives
    # Isolated (-I): the runtime's working directory and environment cannot
    # put other code in place of the plugin; only the package found at setup.
    program = f"import sys; sys.path.insert(0, {str(root)!r}); import launcher.cni as c; c.run()"
    shim = (
        "#!/bin/sh\n"
        "# The mesh's CNI plugin, installed by 'mesh setup-cni'.\n"
        f'cd / && exec {shlex.quote(sys.executable)} -I -c {shlex.quote(program)} "$@"\n'
    )
    if a.exec_in_router:
        # Kubernetes: the host has no Python of ours; the plugin runs in the
        # router container's mount namespace (hostPID shows its process),
        # in the host's network namespace, where the runtime called it.
        pid_file = Path(a.state_dir) / "router.pid"
        shim = (
            "#!/bin/sh\n"
            "# The mesh's CNI plugin, run inside the router's container ('mesh setup-cni').\n"
            f'pid=$(cat "{pid_file}" 2>/dev/null)\n'
            'if [ -z "$pid" ] || [ ! -d "/proc/$pid" ]; then\n'
            '  echo \'{"cniVersion":"1.0.0","code":11,"msg":"the mesh router is not running"}\'\n'
            "  exit 1\n"
            "fi\n"
            'exec nsenter -t "$pid" -m -- mesh-cni\n'
        )
    plugin = bin_dir / "mesh-cni"
    atomic_write(plugin, shim.encode(), 0o755)
    plugins: list[dict[str, Any]] = [
        {
            "type": "mesh-cni",
            "stateDir": str(a.state_dir),
            "defaultRoute": not a.no_default_route,
            "meshDns": True,
            "capabilities": {"ips": True},
        }
    ]
    if a.portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    conflist = {"cniVersion": "1.0.0", "name": a.network, "plugins": plugins}
    path = conf_dir / f"10-{a.network}.conflist"
    atomic_write(path, (json.dumps(conflist, indent=2) + "\n").encode(), 0o644)
    print(f"plugin {plugin}\nconfiguration {path}")
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


def cmd_kube_sync(a: argparse.Namespace) -> int:
    from launcher import kube

    return kube.run(a.state_dir, a.port, a.interval, a.once)


# -- argument parsing -----------------------------------------------------------


def build_parser(config_defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """The command line; ``config_defaults`` (from ``--config FILE``) are the
    defaults of the router's options in 'launch' and 'router'."""
    p = Parser(
        prog="mesh",
        description="meshrouter: an encrypted userspace mesh network for containers.",
        epilog="Each host runs 'mesh launch'; containers join with 'mesh attach'. "
        "State lives in $MESH_STATE_DIR, else /var/lib/meshrouter "
        "(a netns-NAME subfolder inside a named network namespace).",
    )
    p.add_argument("--version", action="version", version=f"meshrouter {__version__}")
    common = Parser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="router state directory (default: $MESH_STATE_DIR, else /var/lib/meshrouter, "
        "or /var/lib/meshrouter/netns-NAME inside a named network namespace)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = sub.add_parser(
        "launch",
        parents=[common],
        help="start the router in the background",
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

    sp = sub.add_parser(
        "router",
        parents=[common],
        help="run the router in the foreground",
        description="Run the router in the foreground (for the container "
        "image and service managers). Stops on SIGTERM/SIGINT.",
    )
    _router_options(sp, config_defaults)
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
        help="attach a container: mesh attach [ADDR...] CONTAINER",
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
        help="attach a recorded container again after it restarted (the router runs it)",
        description="If CONTAINER (a Docker id or name) was attached and has lost its link, "
        "attach it again with the same address and name. The router runs this on every "
        "container start the Docker engine reports.",
    )
    sp.add_argument("container", metavar="CONTAINER")
    sp.set_defaults(func=cmd_reattach)

    sp = sub.add_parser(
        "prune",
        parents=[common],
        help="forget containers removed without detach (the router runs it)",
        description="Drop the records (and anti-spoofing rules) of attached containers "
        "that no longer exist: removed from their engine, or their namespace deleted. "
        "The router runs this when it finds their namespaces gone.",
    )
    sp.set_defaults(func=cmd_prune)

    sp = sub.add_parser(
        "detach",
        parents=[common],
        help="detach a container from the mesh (or take some of its addresses away)",
        description="Without addresses: remove CONTAINER's link to the mesh and release all "
        "its addresses. With ADDR...: release only those; the link goes with the last one.",
    )
    sp.usage = "mesh detach [-h] [--state-dir DIR] [ADDR...] CONTAINER"
    sp.add_argument("args", nargs="+", metavar="[ADDR...] CONTAINER", help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_detach)

    sp = sub.add_parser(
        "status", parents=[common], help="show the router, its connections and targets"
    )
    sp.add_argument(
        "what", nargs="?", choices=["peers", "connections", "targets", "ipam", "dns", "expose"]
    )
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

    sp = sub.add_parser(
        "ping",
        parents=[common],
        help="round trips to a peer over the mesh's encrypted UDP path, and the path",
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

    sp = sub.add_parser("ps", parents=[common], help="list containers attached on this host")
    sp.add_argument("--json", action="store_true", help="the records as JSON")
    sp.set_defaults(func=cmd_ps)

    sp = sub.add_parser(
        "version",
        parents=[common],
        help="versions: meshrouter, protocol, data plane, Python",
        description="Print this client's versions (meshrouter, the protocol versions it "
        "speaks, whether the C data plane is built, Python), and the running router's.",
    )
    sp.add_argument("--json", action="store_true", help="as JSON")
    sp.set_defaults(func=cmd_version)

    sp = sub.add_parser(
        "password",
        parents=[common],
        help="rotate the mesh password without downtime: mesh password rotate --new-file F",
        description="'rotate' gives the mesh a new password, on one host: the mesh carries "
        "it to every peer (sealed on each connection). For WINDOW every peer accepts the "
        "old and the new one and re-keys its connections under the new one; then the old "
        "one is refused, with a reason that names the rotation. Survives restarts. Put the "
        "new file where each host's 'mesh launch' reads it before the window ends, for "
        "peers that are down now.",
    )
    sp.add_argument("action", choices=["rotate"])
    sp.add_argument("--new-file", required=True, metavar="FILE", help="the new password")
    sp.add_argument(
        "--window",
        default="1h",
        metavar="DURATION",
        help="how long the old password stays accepted: 90s, 30m, 2h (default: %(default)s)",
    )
    sp.set_defaults(func=cmd_password)

    for cmd, func, what in (
        ("dns-add", cmd_dns_add, "add"),
        ("dns-remove", cmd_dns_remove, "remove"),
    ):
        sp = sub.add_parser(
            cmd,
            parents=[common],
            help=f"{what} names in the mesh's DNS",
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

    sp = sub.add_parser(
        "dns-lookup", parents=[common], help="addresses of a name in the mesh's DNS"
    )
    sp.add_argument("name", metavar="NAME")
    sp.set_defaults(func=cmd_dns_lookup)

    sp = sub.add_parser(
        "dns-args",
        parents=[common],
        help="print the 'docker run' options that point a container at the mesh's DNS",
    )
    sp.set_defaults(func=cmd_dns_args)

    sp = sub.add_parser(
        "expose",
        parents=[common],
        help="give this host an address on the mesh",
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

    sp = sub.add_parser(
        "hide", parents=[common], help="undo 'mesh expose' (addresses and masquerading)"
    )
    sp.set_defaults(func=cmd_hide)

    sp = sub.add_parser(
        "reset",
        parents=[common],
        help="leave the mesh for good: hand over the address share, remove everything",
        description="Stop the router after handing this peer's address share to a "
        "connected peer (no 'mesh rmpeer' needed later), then remove what 'expose' made, "
        "the containers' links, the bridge (if launch made it) and the state directory.",
    )
    sp.set_defaults(func=cmd_reset)

    sp = sub.add_parser(
        "setup-cni",
        parents=[common],
        help="install the CNI plugin and a network configuration for it",
        description="Write BIN_DIR/mesh-cni (a small script that runs this installation's "
        "plugin, launcher.cni) and CONF_DIR/10-NETWORK.conflist naming it, with this "
        "host's state directory, so a CNI runtime (podman with the cni backend, "
        "containerd, CRI-O, kubelet) puts containers of network NETWORK on the mesh.",
    )
    sp.add_argument("--bin-dir", default="/opt/cni/bin", help="plugin directory (%(default)s)")
    sp.add_argument(
        "--conf-dir", default="/etc/cni/net.d", help="configuration directory (%(default)s)"
    )
    sp.add_argument("--network", default="mesh", help="network name (%(default)s)")
    sp.add_argument(
        "--no-default-route",
        action="store_true",
        help="no default route via this host (by default the host is exposed and is the gateway)",
    )
    sp.add_argument(
        "--portmap", action="store_true", help="chain the reference 'portmap' plugin after ours"
    )
    sp.add_argument(
        "--exec-in-router",
        action="store_true",
        help="the plugin enters the running router's mount namespace to run "
        "(for Kubernetes, where the node has no Python of ours)",
    )
    sp.set_defaults(func=cmd_setup_cni)

    sp = sub.add_parser(
        "doctor",
        parents=[common],
        help="check this host and every peer; say what is wrong and what to do",
        description="Checks the router, the bridge and TAP, /dev/net/tun, kernel offloads, "
        "nftables, address agreement, DNS, expose, every target (TCP reachability, password) "
        "and connection (UDP both ways, path MTU, clock skew, version), and unreachable "
        "peers. One line per problem; exit status 0 when nothing failed, 1 otherwise.",
    )
    sp.add_argument("-v", "--verbose", action="store_true", help="print what is fine too")
    sp.set_defaults(func=cmd_doctor)

    sp = sub.add_parser(
        "kube-sync",
        parents=[common],
        help="connect to the Kubernetes cluster's nodes; rmpeer deleted ones",
        description="Every INTERVAL seconds: list the nodes (in-cluster service account, "
        "else ~/.kube/config), ask the router to connect to each node's InternalIP, and "
        "reclaim the address share of a peer whose node was deleted (rmpeer; done by "
        "the lowest-named reachable peer only). Needs the 'kubernetes' Python package.",
    )
    sp.add_argument("--interval", type=float, default=10.0, help="seconds (%(default)s)")
    sp.add_argument("--port", type=int, default=6783, help="the routers' port (%(default)s)")
    sp.add_argument("--once", action="store_true", help="one round, then exit")
    sp.set_defaults(func=cmd_kube_sync)

    sp = sub.add_parser(
        "stop", parents=[common], help="stop the router (and remove the bridge if it made it)"
    )
    sp.set_defaults(func=cmd_stop)
    return p


def _router_options(sp: argparse.ArgumentParser, defaults: dict[str, Any] | None) -> None:
    config.add_arguments(sp)
    sp.add_argument(
        "--config",
        metavar="FILE",
        help="read options from FILE (TOML; keys are the options' names, e.g. "
        'password-file = "/etc/meshrouter/password", port = 6783, dns = false, '
        'peers = ["192.0.2.1"]); options given here win',
    )
    if defaults:
        sp.set_defaults(**defaults)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "config", None):  # its values as defaults; flags given win
        try:
            defaults = config.read_config(args.config)
        except ValueError as exc:
            print(f"mesh: {exc}", file=sys.stderr)
            return 1
        args = build_parser(defaults).parse_args(argv)
    args.state_dir = (args.state_dir or default_state_dir()).absolute()
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"mesh: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mesh: interrupted", file=sys.stderr)
        return 130
