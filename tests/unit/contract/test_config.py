"""One table of router options: the CLI's flags and the daemon's arguments come from it."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from meshrouter.contract import config
from meshrouter.contract.config import RouterOptions


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    config.add_arguments(p)
    return p


def test_defaults_come_from_the_dataclass() -> None:
    assert config.from_namespace(parser().parse_args([])) == RouterOptions()


def test_every_option_survives_the_trip_to_the_daemon_and_back() -> None:
    opts = RouterOptions(
        password_file="/tmp/pw",
        bridge="br9",
        tap="tap9",
        port=7000,
        listen="198.18.0.1",
        nickname="n1",
        ipalloc_range="10.40.0.0/16",
        ipalloc_init=3,
        mtu=1300,
        log_level="debug",
        log_format="json",
        metrics_addr="",
        conn_limit=7,
        busy_poll_us=50,
        offload=False,
        peers=["198.18.0.2", "198.18.0.3:7000"],
    )
    assert config.from_namespace(parser().parse_args(config.to_argv(opts))) == opts


def test_launch_only_options_stay_with_the_launcher() -> None:
    opts = RouterOptions(ipalloc_default_subnet="10.32.1.0/24")
    assert "--ipalloc-default-subnet" not in config.to_argv(opts)
    ns = parser().parse_args(["--ipalloc-default-subnet", "10.32.1.0/24"])
    assert ns.ipalloc_default_subnet == "10.32.1.0/24"


def test_true_booleans_become_no_switches() -> None:
    assert parser().parse_args(["--no-offload"]).offload is False
    assert config.to_argv(RouterOptions()) == config.to_argv(RouterOptions(offload=True))
    assert "--no-offload" in config.to_argv(RouterOptions(offload=False))


def test_every_field_has_help_and_a_bad_choice_is_refused() -> None:
    for f in dataclasses.fields(RouterOptions):
        assert f.metadata["help"], f.name
    with pytest.raises(SystemExit):
        parser().parse_args(["--log-level", "loud"])


@pytest.mark.parametrize(
    ("flag", "says"),
    [
        (
            ["--trusted-subnets", "198.18.0.0/24,10.0.0.300/8"],
            "mesh: --trusted-subnets: '10.0.0.300/8' is not a CIDR",
        ),
        (
            ["--nat-public", "my-router:6783"],
            "mesh: --nat-public 'my-router:6783': expected an IP address",
        ),
    ],
)
def test_launch_refuses_a_bad_address_option_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: list[str], says: str
) -> None:
    from launcher.cli import main

    password = tmp_path / "password"
    password.write_text("secret\n")
    state = tmp_path / "state"
    argv = ["launch", "--state-dir", str(state), "--password-file", str(password)]
    assert main([*argv, *flag]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(says), err
    assert "\n" not in err
    assert not state.exists()  # refused before anything was made


def test_nat_public_addresses_are_canonical_and_a_bad_one_is_named() -> None:
    assert config.parse_public("", 6783) == ()
    assert config.parse_public("203.0.113.9, 203.0.113.9:6783,[2001:db8::07]:7000", 6783) == (
        "203.0.113.9:6783",
        "[2001:db8::7]:7000",
    )
    for bad, says in (
        ("gateway.example:6783", "expected an IP address"),
        ("203.0.113.9:0", "expected an IP address"),
        ("127.0.0.1", "not an address peers could dial"),
        ("0.0.0.0:6783", "not an address peers could dial"),
        (",".join(f"203.0.113.{i}" for i in range(1, 6)), "at most 4"),
    ):
        with pytest.raises(ValueError, match=says):
            config.parse_public(bad, 6783)
