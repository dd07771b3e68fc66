"""What operators and local clients send, checked where it enters: only BadInput,
one line naming what was wrong (hypothesis for each parser)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrouter.base.boundary import Boundary
from meshrouter.base.errors import BadInput
from meshrouter.base.inputs import MAX_JSON_DEPTH, check_host, json_untrusted, split_address
from meshrouter.contract import config
from meshrouter.daemon import main as daemon
from meshrouter.mesh.targets import Targets


def test_json_untrusted_bounds_depth_and_size() -> None:
    assert json_untrusted(b'{"op": "status", "x": [[1]]}', what="request", max_bytes=100) == {
        "op": "status",
        "x": [[1]],
    }
    deep = "[" * 60000
    with pytest.raises(BadInput, match="request: JSON nested deeper than 32 levels"):
        json_untrusted(deep, what="request", max_bytes=10**6)
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert json_untrusted(ok, what="x", max_bytes=10**6)
    # Brackets inside strings are no nesting.
    assert json_untrusted('["' + "[" * 100 + '"]', what="x", max_bytes=10**6) == ["[" * 100]
    with pytest.raises(BadInput, match="larger than 10 bytes"):
        json_untrusted(b"[" + b"1," * 10 + b"1]", what="body", max_bytes=10)
    with pytest.raises(BadInput, match="not UTF-8"):
        json_untrusted(b"\xff\xfe", what="body", max_bytes=10)
    with pytest.raises(BadInput, match="not JSON"):
        json_untrusted(b"{nope", what="body", max_bytes=10)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(alphabet='[]{}",:\\0 a', max_size=300)))
def test_json_untrusted_raises_only_bad_input(data: bytes | str) -> None:
    message = ""
    try:
        json_untrusted(data, what="fuzz", max_bytes=200)
    except BadInput as exc:
        message = str(exc)
    assert "\n" not in message


def test_host_names_a_resolver_can_take() -> None:
    for good in ("node1.example.com", "h1", "198.18.0.1", "fd00::1", "a-b.c_d.example.", "x" * 63):
        assert check_host(good) == good
    for bad, why in (
        ("node1..example.com", "empty label"),
        ("x" * 64 + ".example.com", "over 63 characters"),
        ("-node.example.com", "not a DNS label"),
        ("nöde.example.com", "not a DNS label"),
        ("a" * 250 + ".example.com", "longer than 253"),
        ("", "empty"),
        (".", "empty"),
    ):
        with pytest.raises(BadInput, match=why):
            check_host(bad)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_peer_addresses_raise_only_bad_input(text: str) -> None:
    """Whatever an operator types at 'mesh connect' (or a saved target holds)."""
    try:
        host, port = split_address(text, 6783)
    except BadInput as exc:
        message = str(exc)
        assert message.startswith(("peer address", "empty peer address"))
        return
    assert 0 < port < 65536
    host.encode("idna")  # what the dialer's resolver does with it: never UnicodeError


def test_a_saved_target_no_release_takes_is_skipped() -> None:
    import random

    from meshrouter.mesh.core import Mesh
    from meshrouter.testing.control import psk
    from meshrouter.testing.fakes import name

    m = Mesh(
        name=name(1),
        nickname="host1",
        psk=psk(b"secret"),
        port=6783,
        ipalloc_range="10.32.0.0/12",
        peers=["198.18.0.2", "node1..example.com", "x" * 64 + ".com"],
        rng=random.Random(0),
    )
    assert [t.address for t in m.targets] == ["198.18.0.2:6783"]
    assert m.counters["targets_skipped"] == 2
    t = Targets(6783)
    with pytest.raises(BadInput, match="empty label"):
        t.add("node1..example.com", 0.0)


def test_boundary_counts_and_says_one_line(caplog: pytest.LogCaptureFixture) -> None:
    b = Boundary(logging.getLogger("test"))
    assert b.failed("api", BadInput("bad thing"), 0.0) == "bad thing"
    assert b.failed("api", KeyError("x"), 0.0) == "internal error (KeyError); the router logged it"
    assert b.failed("api", KeyError("y"), 1.0) == "internal error (KeyError); the router logged it"
    assert b.counts == {"api_bad_requests": 1, "api_errors": 2}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # the second KeyError within a minute is held back
    assert errors[0].exc_info is not None


def test_config_file_takes_the_options_of_the_flags(tmp_path: Path) -> None:
    f = tmp_path / "meshrouter.toml"
    f.write_text(
        'password-file = "/etc/meshrouter/password"\nport = 7000\ndns = false\n'
        'peers = ["198.18.0.1", "198.18.0.2"]\nlog_format = "json"\n'
    )
    assert config.read_config(str(f)) == {
        "password_file": "/etc/meshrouter/password",
        "port": 7000,
        "dns": False,
        "peers": ["198.18.0.1", "198.18.0.2"],
        "log_format": "json",
    }
    for text, why in (
        ("prot = 7000\n", "unknown key 'prot'"),
        ("port = 0\n", "port 0: must be from 1 to 65535"),
        ('port = "x"\n', "'x' is not a whole number"),
        ("dns = 1\n", "dns: expected true or false"),
        ('log-format = "xml"\n', "'xml' is not one of text, json"),
        ("peers = [1]\n", "peers: expected a list of strings"),
        ("port = \n", "not TOML"),
    ):
        f.write_text(text)
        with pytest.raises(BadInput, match=why) as info:
            config.read_config(str(f))
        assert str(info.value).startswith(f"config file {f}: ")
    with pytest.raises(BadInput, match="No such file"):
        config.read_config(str(tmp_path / "missing.toml"))


def test_config_file_values_are_defaults_and_flags_win(tmp_path: Path) -> None:
    from launcher import cli

    f = tmp_path / "m.toml"
    f.write_text('port = 7000\nmtu = 1300\npeers = ["198.18.0.9"]\n')
    parser = cli.build_parser(config.read_config(str(f)))
    a = parser.parse_args(["launch", "--config", str(f), "--mtu", "1400"])
    assert (a.port, a.mtu, a.peers) == (7000, 1400, ["198.18.0.9"])
    a = parser.parse_args(["launch", "--config", str(f), "198.18.0.1"])
    assert a.peers == ["198.18.0.1"]
    f.write_text("port = 99999\n")
    assert cli.main(["launch", "--config", str(f)]) == 1


def test_json_log_lines_have_milliseconds_zone_pid_and_fields(tmp_path: Path) -> None:
    log_file = tmp_path / "router.log"
    try:
        daemon.setup_logging("info", "json", str(log_file))
        logging.getLogger("meshrouter").info("hello %s", "there", extra={"peer": "h2", "n": 3})
        rec = json.loads(log_file.read_text().splitlines()[-1])
    finally:
        daemon.close_logging()
    assert rec["message"] == "hello there"
    assert rec["peer"] == "h2"
    assert rec["n"] == 3
    assert rec["pid"] > 0
    # 2026-12-01T21:41:17.042+00:00: milliseconds and the UTC offset.
    assert len(rec["time"]) == 29
    assert rec["time"][19] == "."
    assert rec["time"][23] in "+-"


def test_the_log_file_is_rotated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon, "LOG_ROTATE_BYTES", 2000)
    log_file = tmp_path / "router.log"
    try:
        daemon.setup_logging("info", "text", str(log_file))
        for i in range(200):
            logging.getLogger("meshrouter").info("line %d of the router's log", i)
    finally:
        daemon.close_logging()
    assert log_file.stat().st_size <= 2000
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ["router.log", "router.log.1", "router.log.2", "router.log.3"]
