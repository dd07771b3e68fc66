"""The client without a router: versions, what it says when none runs, and
one-line errors for bad arguments."""

from __future__ import annotations

import json
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
