"""The client of the router's local API (what ``mesh`` and any plugin use).

One JSON request and one JSON reply per connection over the unix socket
``router.sock`` in the state directory; see ``api`` for the requests.  This
module imports nothing heavy: it is loaded on every ``mesh`` command.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from meshrouter.contract.requests import Request

R = TypeVar("R")

SOCKET_NAME = "router.sock"


class ApiError(RuntimeError):
    """The router answered with an error; the message is for the operator."""


class RouterDown(ApiError):
    """No router answers at the state directory's socket."""


def client_argv() -> list[str]:
    """The command that runs the installed ``mesh`` (the router, and what the
    router runs of the client): isolated mode (``-I``), so that neither the
    working directory nor PYTHONPATH can put other code in its place; callers
    start it in ``/`` and pass absolute paths."""
    return [sys.executable, "-I", "-m", "launcher"]


def daemon_argv() -> list[str]:
    """The command that runs the installed router daemon, isolated as ``client_argv``."""
    return [sys.executable, "-I", "-m", "meshrouter.daemon"]


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


def call(path: Path, request: dict[str, Any], timeout: float = 45.0) -> Any:
    """Send one request and return the result.  Raises OSError (no router,
    no answer) or ApiError (the router refused)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        reply = json.loads(data)
    except ValueError:
        raise ApiError("the router's answer was not JSON (is it the same version?)") from None
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else None
        raise ApiError(str(error or "router returned an error"))
    return reply["result"]


def ask(state_dir: Path, request: Request[R], timeout: float = 45.0) -> R:
    """``request`` to the router of ``state_dir``, and its typed result.
    Raises ApiError (its refusal, one line), or RouterDown when none answers."""
    path = socket_path(state_dir)
    try:
        return cast(R, call(path, request.to_json(), timeout))
    except (FileNotFoundError, ConnectionRefusedError):
        raise RouterDown(
            f"no router is running (state dir {state_dir}): start one with 'mesh launch'"
        ) from None
    except OSError as exc:
        raise RouterDown(f"cannot reach the router at {path}: {exc}") from None
