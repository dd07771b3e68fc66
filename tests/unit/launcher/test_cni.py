"""The CNI plugin without a router or root: its answers and errors, checked
against the shapes of the CNI specification (1.0.0 and 1.1.0)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from launcher import cni


def run(env: dict[str, str], stdin: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = cni.main(env, stdin)
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def conf(tmp_path: Path, **kw: Any) -> str:
    return json.dumps(
        {"cniVersion": "1.0.0", "name": "mesh", "type": "mesh-cni", "stateDir": str(tmp_path), **kw}
    )


def is_cidr(text: Any) -> bool:
    try:
        ipaddress.ip_interface(text)
    except ValueError:
        return False
    return "/" in text


def check_error(doc: Any, code: int) -> None:
    """The specification's error: cniVersion, code (int), msg, optional details."""
    assert set(doc) <= {"cniVersion", "code", "msg", "details"}
    assert isinstance(doc["cniVersion"], str)
    assert doc["code"] == code
    assert isinstance(doc["msg"], str)
    assert doc["msg"]


def check_result(doc: Any) -> None:
    """The specification's ADD result (1.0.0 shape)."""
    assert isinstance(doc["cniVersion"], str)
    ifaces = doc["interfaces"]
    assert all(isinstance(i["name"], str) for i in ifaces)
    for ip in doc["ips"]:
        assert is_cidr(ip["address"])
        assert 0 <= ip["interface"] < len(ifaces)
        if "gateway" in ip:
            ipaddress.ip_address(ip["gateway"])
    for r in doc.get("routes", []):
        assert is_cidr(r["dst"])
    dns = doc.get("dns", {})
    assert set(dns) <= {"nameservers", "domain", "search", "options"}


def test_version_lists_what_is_supported(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run({"CNI_COMMAND": "VERSION"}, "", capsys)
    assert code == 0
    assert doc["cniVersion"] == "1.1.0"
    assert "1.0.0" in doc["supportedVersions"]
    assert all(isinstance(v, str) for v in doc["supportedVersions"])


@pytest.mark.parametrize(
    ("stdin", "code", "words"),
    [
        ("not json", cni.CODE_DECODE, "not JSON"),
        ("[1]", cni.CODE_DECODE, "JSON object"),
        ('{"cniVersion": "9.9.9", "name": "mesh"}', cni.CODE_VERSION, "unsupported cniVersion"),
        ('{"cniVersion": "1.0.0"}', cni.CODE_CONFIG, '"name"'),
        (
            '{"cniVersion": "1.0.0", "name": "m", "meshDns": "yes"}',
            cni.CODE_CONFIG,
            '"meshDns" must',
        ),
    ],
)
def test_bad_configurations_get_the_specifications_errors(
    stdin: str, code: int, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, doc = run({"CNI_COMMAND": "ADD"}, stdin, capsys)
    assert rc == 1
    check_error(doc, code)
    assert words in doc["msg"] + doc.get("details", "")


def test_missing_environment_and_unknown_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, doc = run({"CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0"}, conf(tmp_path), capsys)
    assert rc == 1
    check_error(doc, cni.CODE_ENV)
    assert "CNI_CONTAINERID" in doc["msg"]
    rc, doc = run({"CNI_COMMAND": "FLY"}, conf(tmp_path), capsys)
    check_error(doc, cni.CODE_ENV)


def test_add_with_the_router_down_says_try_later_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    netns = tmp_path / "ns"
    netns.write_text("")
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "abc123",
        "CNI_NETNS": str(netns),
        "CNI_IFNAME": "eth0",
    }
    rc, doc = run(env, conf(tmp_path), capsys)
    assert rc == 1
    check_error(doc, cni.CODE_TRY_LATER)
    assert "not running" in doc["msg"]
    assert not (tmp_path / "attachments.json").exists()
    rc, doc = run(dict(env, CNI_NETNS=str(tmp_path / "gone")), conf(tmp_path), capsys)
    check_error(doc, cni.CODE_UNKNOWN_CONTAINER)
    rc, doc = run(dict(env, CNI_COMMAND="STATUS"), conf(tmp_path, cniVersion="1.1.0"), capsys)
    check_error(doc, cni.CODE_UNAVAILABLE)


def test_del_of_what_is_not_there_succeeds_with_the_router_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "abc123", "CNI_IFNAME": "eth0"}
    for _ in range(2):
        assert run(env, conf(tmp_path), capsys) == (0, None)


def test_results_in_each_version_and_after_a_previous_plugin() -> None:
    ours = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "vethwl1"}, {"name": "eth0", "mac": "aa:bb", "sandbox": "/x"}],
        "ips": [{"address": "10.32.0.5/12", "gateway": "10.32.0.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}],
        "dns": {"nameservers": ["169.254.53.53"], "search": ["mesh.local"]},
    }
    check_result(ours)
    old = cni.for_version(ours, "0.4.0")
    assert old["cniVersion"] == "0.4.0"
    assert old["ips"][0]["version"] == "4"
    assert "version" not in cni.for_version(ours, "1.0.0")["ips"][0]
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "dummy0"}],
        "ips": [{"address": "192.0.2.2/24", "interface": 0}],
        "dns": {},
    }
    chained = cni._chain(prev, ours)
    check_result(chained)
    assert [i["name"] for i in chained["interfaces"]] == ["dummy0", "vethwl1", "eth0"]
    assert chained["ips"][1]["interface"] == 2
    assert chained["dns"] == ours["dns"]


def test_cni_args_are_parsed() -> None:
    args = cni.parse_args(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;IP=10.32.0.9"
    )
    assert args["K8S_POD_NAME"] == "web-0"
    assert args["IP"] == "10.32.0.9"


@pytest.mark.parametrize(
    "stdin",
    [b"[" * 60000, b"\xff\xfe{", b'{"cniVersion": ' + b"{" * 5000, "{" * 200000],
)
def test_garbage_on_stdin_is_the_specifications_error_never_a_traceback(
    stdin: bytes | str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cni.main({"CNI_COMMAND": "ADD"}, stdin)
    captured = capsys.readouterr()
    assert rc == 1
    assert "Traceback" not in captured.out + captured.err
    check_error(json.loads(captured.out), cni.CODE_DECODE)


def test_a_bug_is_the_specifications_error_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(cni.Plugin, "run", broken)
    rc = cni.main({"CNI_COMMAND": "ADD"}, conf(tmp_path))
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1
    check_error(doc, cni.CODE_INTERNAL)
    assert "KeyError" in doc["msg"]
