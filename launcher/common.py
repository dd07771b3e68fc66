"""What every command group shares: the error a command ends with, the parser
that says it in one line, the router's API (typed requests), its state files."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from launcher.parser import CliError, Parser
from launcher.table import COMMANDS
from meshrouter import __version__
from meshrouter.contract import apiclient
from meshrouter.contract.state import (
    load_json,
)
from meshrouter.contract.status import RouterStatus

if TYPE_CHECKING:  # loaded by the commands that use them: 'mesh --help' needs none
    import subprocess

    from meshrouter.attachments.attach import Attachment
    from meshrouter.contract.config import RouterOptions
    from meshrouter.contract.requests import Request

ROUTER_IMAGE = os.environ.get("MESH_IMAGE", f"meshrouter:{__version__}")


CONTAINER = "meshrouter"  # the router's container when launched with --engine docker


R = TypeVar("R")


def _ask(state_dir: Path, request: Request[R]) -> R:
    """The router's answer; its refusal (or its absence) as the command's error."""
    try:
        return apiclient.ask(state_dir, request)
    except apiclient.ApiError as exc:
        raise CliError(str(exc)) from None


def _status(state_dir: Path) -> RouterStatus:
    from meshrouter.contract import requests as rq

    st = _ask(state_dir, rq.Status())
    return st


def _router_running(state_dir: Path) -> bool:
    from meshrouter.contract import requests as rq

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
    import dataclasses

    from meshrouter.contract import config

    opts = config.from_namespace(a)
    paths = {
        name: os.path.abspath(value)
        for name in ("password_file", "cert", "key", "ca", "log_file", "docker_plugin")
        if (value := getattr(opts, name))
    }
    return dataclasses.replace(opts, **paths)


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


def _docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    import subprocess

    try:
        return subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(["docker", *args], 1, "", str(exc))


def _read_pid(state_dir: Path) -> int | None:
    try:
        pid = int((state_dir / "router.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _wait_exit(pid: int, timeout: float) -> None:
    import signal
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _by_name(r: Attachment) -> str:
    return r.container


def _router_options(sp: argparse.ArgumentParser, defaults: dict[str, Any] | None) -> None:
    from meshrouter.contract import config

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


def add_command(
    sub: argparse._SubParsersAction[Parser], common: Parser, name: str, **kw: Any
) -> Parser:
    """The parser of command ``name``: the common options, and its help from the table."""
    return sub.add_parser(name, parents=[common], help=COMMANDS[name][1], **kw)
