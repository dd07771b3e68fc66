"""The ``mesh`` command line: which group each command belongs to, and main.

Each group (``launcher.commands.*``) holds its commands and registers their
arguments.  Only the group of the command given is imported and registered
in full: ``mesh status`` loads no attach code, no Docker client; ``mesh
--version`` and ``mesh --help`` load no group at all (the table below has
every command's one-line help).
"""

from __future__ import annotations

import sys

from launcher.table import COMMANDS
from meshrouter import __version__

TYPE_CHECKING = False  # not typing's: 'mesh --version' and '--help' load no typing
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from launcher.parser import Parser


def _path(text: str) -> Path:
    """``--state-dir``'s type: pathlib is loaded only when it is given."""
    from pathlib import Path

    return Path(text)


def build_parser(
    config_defaults: dict[str, Any] | None = None, command: str | None = None
) -> Parser:
    """The command line; ``config_defaults`` (from ``--config FILE``) are the
    defaults of the router's options in 'launch' and 'router'.  With
    ``command``, only its group is registered in full (the others by name and
    help); without, every group."""
    import importlib

    from launcher.parser import Parser

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
        type=_path,
        default=None,
        metavar="DIR",
        help="router state directory (default: $MESH_STATE_DIR, else /var/lib/meshrouter, "
        "or /var/lib/meshrouter/netns-NAME inside a named network namespace)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    wanted: set[str] | None = {COMMANDS[command][0]} if command in COMMANDS else None
    if command == "":  # 'mesh --help', 'mesh': the list of commands is all it shows
        wanted = set()
    groups = dict.fromkeys(g for g, _ in COMMANDS.values())
    for group in groups:
        if wanted is None or group in wanted:
            module = importlib.import_module(f"launcher.commands.{group}")
            module.register(sub, common, config_defaults)
    for name, (group, help) in COMMANDS.items():
        if wanted is not None and group not in wanted:
            sub.add_parser(name, help=help, add_help=False)
    return p


def _command(argv: list[str]) -> str | None:
    """The command ``argv`` names, if any (its first word that is no option)."""
    for i, arg in enumerate(argv):
        if arg == "--state-dir":
            continue
        if not arg.startswith("-") and (i == 0 or argv[i - 1] != "--state-dir"):
            return arg
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"]:
        print(f"meshrouter {__version__}")
        return 0
    command = _command(argv)
    if command is None and not set(argv) - {"-h", "--help"}:
        command = ""
    args = build_parser(command=command).parse_args(argv)
    if getattr(args, "config", None):  # its values as defaults; flags given win
        from meshrouter.contract import config

        try:
            defaults = config.read_config(args.config)
        except ValueError as exc:
            print(f"mesh: {exc}", file=sys.stderr)
            return 1
        args = build_parser(defaults, command=command).parse_args(argv)
    from launcher.parser import CliError
    from meshrouter.contract.state import default_state_dir

    given: Path | None = args.state_dir
    args.state_dir = (given or default_state_dir()).absolute()
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"mesh: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full or read-only disk, a file that went: one line, no traceback
        told = exc.strerror if exc.filename is None and exc.strerror else str(exc)
        print(f"mesh: {told}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mesh: interrupted", file=sys.stderr)
        return 130
