"""The client without a router: versions, what it says when none runs, and
one-line errors for bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import cli
from meshrouter import __version__
from meshrouter.base.constants import protocol_versions


def test_version_says_what_this_client_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["version", "--json", "--state-dir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["client"]["version"] == __version__
    assert doc["client"]["protocol"] == protocol_versions()
    assert isinstance(doc["client"]["dataplane_built"], bool)
    assert doc["client"]["python"].startswith("3.")
    assert doc["router"] is None
    assert cli.main(["version", "--state-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"meshrouter {__version__}\n")
    assert "router: not running here" in text


def test_with_no_router_status_report_and_stop_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "router.err").write_text("cannot start router: password file /x is empty\n")
    assert cli.main(["status", "--json", "--state-dir", str(tmp_path)]) == 1
    down = json.loads(capsys.readouterr().out)
    assert down["running"] is False
    assert down["last_error"] == "cannot start router: password file /x is empty"
    assert cli.main(["report", "--state-dir", str(tmp_path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["running"] is False
    assert report["attached"] == []
    assert cli.main(["stop", "--state-dir", str(tmp_path)]) == 0
    assert "nothing to stop" in capsys.readouterr().out
    assert cli.main(["ps", "--json", "--state-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["launch", "--port", "0"], "mesh launch: argument --port: must be from 1 to 65535"),
        (["launch", "--mtu", "x"], "mesh launch: argument --mtu: 'x' is not a whole number"),
        (["attach"], "mesh attach: the following arguments are required"),
        (["fly"], "mesh: argument COMMAND: invalid choice: 'fly'"),
    ],
)
def test_a_bad_argument_is_one_line(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(words), err
    assert err.count("\n") == 1
    assert err.rstrip().endswith("--help')")


def test_every_command_is_in_the_table_and_registered_by_its_group() -> None:
    import argparse

    def names(p: argparse.ArgumentParser) -> set[str]:
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        return set(sub.choices)

    assert names(cli.build_parser()) == set(cli.COMMANDS)
    for command, (group, _) in cli.COMMANDS.items():
        p = cli.build_parser(command=command)
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        assert sub.choices[command].get_default("func") is not None, command
        mod = sub.choices[command].get_default("func").__module__
        assert mod == f"launcher.commands.{group}", (command, mod)


def test_help_and_version_load_no_command_group() -> None:
    code = (
        "import sys\n"
        "from launcher import cli\n"
        "for argv in (['--version'], ['--help']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('launcher.commands.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"
    for command in cli.COMMANDS:  # --help lists every command
        assert command in out
