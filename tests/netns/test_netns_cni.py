"""The CNI plugin run as a runtime runs it (environment and stdin), against real
routers in the namespace lab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from meshrouter.testing.netlab import REPO, Lab, star, status, tcp_transfer
from tests.unit.launcher.test_cni import check_error, check_result

pytestmark = pytest.mark.netns

LabFactory = Callable[..., Lab]


def cni(
    lab: Lab, i: int, command: str, cid: str = "", netns: str = "", **conf: Any
) -> tuple[int, Any]:
    """Run the plugin on host i; returns its exit status and JSON output."""
    config = {"cniVersion": "1.0.0", "name": "mesh", "type": "mesh-cni"}
    config.update(stateDir=str(lab.state_dir(i)), **conf)
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        CNI_COMMAND=command,
        CNI_CONTAINERID=cid,
        CNI_NETNS=netns,
        CNI_IFNAME="eth0",
        CNI_PATH="/opt/cni/bin",
        CNI_ARGS=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{cid}",
    )
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.host(i), sys.executable, "-m", "launcher.cni"],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.stderr == "", proc.stderr
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


def allocations(lab: Lab, i: int) -> dict[str, str]:
    return {a["address"]: a["container"] for a in status(lab, i)["ipam"]["allocations"]}


def test_add_gives_two_containers_on_two_hosts_a_working_network_and_del_undoes_it(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(2)
    star(lab, 2)
    a, b = lab.container("pa"), lab.container("pb")
    rc, res_a = cni(lab, 1, "ADD", "aaa1", f"/run/netns/{a}")
    assert rc == 0, res_a
    rc, res_b = cni(lab, 2, "ADD", "bbb2", f"/run/netns/{b}")
    assert rc == 0, res_b
    for res in (res_a, res_b):
        check_result(res)
        assert res["interfaces"][1]["sandbox"].startswith("/run/netns/")
        assert res["dns"]["nameservers"] == ["169.254.53.53"]
        assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": res["ips"][0]["gateway"]}]
    addr_b = res_b["ips"][0]["address"].split("/")[0]
    sent, got = tcp_transfer(lab, a, b, addr_b, 8 << 20)
    assert sent == got
    assert sent.startswith(str(8 << 20))
    # Like 'mesh attach': in 'mesh ps', in DNS by pod name, in IPAM.
    assert "default/pod-aaa1" in lab.mesh(1, "ps").stdout
    lab.wait_for(
        "pod name in DNS on h2",
        lambda: (
            lab.mesh(2, "dns-lookup", "pod-aaa1", check=False).stdout.split()
            == [res_a["ips"][0]["address"].split("/")[0]]
        ),
        timeout=5,
    )
    assert cni(lab, 1, "CHECK", "aaa1", f"/run/netns/{a}")[0] == 0
    # DEL releases the address mesh-wide and is fine twice.
    addr_a = res_a["ips"][0]["address"].split("/")[0]
    assert addr_a in allocations(lab, 1)
    assert cni(lab, 1, "DEL", "aaa1", f"/run/netns/{a}") == (0, None)
    assert cni(lab, 1, "DEL", "aaa1", f"/run/netns/{a}") == (0, None)
    assert addr_a not in allocations(lab, 1)
    assert lab.in_ns(a, "ip", "link", "show", "eth0", check=False).returncode != 0
    rc, err = cni(lab, 1, "CHECK", "aaa1", f"/run/netns/{a}")
    assert rc == 1
    check_error(err, 100)


def test_add_errors_leave_nothing_behind(lab_factory: LabFactory) -> None:
    lab = lab_factory(1)
    lab.launch(1)
    c = lab.container("pc")
    rc, err = cni(lab, 1, "ADD", "ccc3", f"/run/netns/{c}", cniVersion="0.1.0")
    assert rc == 1
    check_error(err, 1)
    rc, err = cni(
        lab, 1, "ADD", "ccc3", f"/run/netns/{c}", ipam={"type": "host-local"}, meshDns="x"
    )
    check_error(err, 7)
    rc, err = cni(lab, 1, "ADD", "ccc3", f"/run/netns/{c}", runtimeConfig={"ips": ["10.99.0.1/16"]})
    check_error(err, 100)
    assert "outside the mesh range" in err["msg"]
    lab.mesh(1, "stop")
    rc, err = cni(lab, 1, "ADD", "ccc3", f"/run/netns/{c}")
    check_error(err, 11)
    assert lab.in_ns(c, "ip", "link", "show", "eth0", check=False).returncode != 0
    assert "vethwl" not in lab.run(1, "ip", "-br", "link").stdout
    assert lab.mesh(1, "ps").stdout.count("\n") == 1  # the header only
    assert cni(lab, 1, "DEL", "ccc3", f"/run/netns/{c}") == (0, None)  # router down: fine


def test_twenty_containers_added_at_once_get_distinct_addresses(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    star(lab, 2)
    names = [lab.container(f"q{k}") for k in range(20)]

    def add(k: int) -> tuple[int, Any]:
        return cni(lab, 1 + k % 2, "ADD", f"id{k:02d}", f"/run/netns/{names[k]}")

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(add, range(20)))
    assert all(rc == 0 for rc, _ in results), [r for r in results if r[0]]
    addrs = {res["ips"][0]["address"] for _, res in results}
    assert len(addrs) == 20
    # A pinned address (runtimeConfig "ips", as podman's --ip passes it).
    pinned = lab.container("pin")
    rc, res = cni(
        lab, 2, "ADD", "pin1", f"/run/netns/{pinned}", runtimeConfig={"ips": ["10.32.9.9/12"]}
    )
    assert rc == 0, res
    assert res["ips"][0]["address"] == "10.32.9.9/12"
    # GC: the runtime knows only id00; the rest on host 1 go.
    valid = [{"containerID": "id00", "ifname": "eth0"}]
    assert cni(lab, 1, "GC", cniVersion="1.1.0", **{"cni.dev/valid-attachments": valid})[0] == 0
    left = [ln for ln in lab.mesh(1, "ps").stdout.splitlines()[1:]]
    assert len(left) == 1
    assert "pod-id00" in left[0]


def test_dual_stack_pods_get_both_families_from_ranges(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    star(lab, 2, "--ipalloc-range6", "fd32::/64")
    ranges = [[{"subnet": "10.32.64.0/18"}], [{"subnet": "fd32::/64"}]]
    a, b = lab.container("pa"), lab.container("pb")
    rc, res_a = cni(lab, 1, "ADD", "aaa1", f"/run/netns/{a}", ipam={"ranges": ranges})
    assert rc == 0, res_a
    rc, res_b = cni(lab, 2, "ADD", "bbb2", f"/run/netns/{b}", ranges=ranges)
    assert rc == 0, res_b
    for res in (res_a, res_b):
        check_result(res)
        v4, v6 = (x["address"] for x in res["ips"])
        assert v4.startswith("10.32.")
        assert int(v4.split(".")[2]) >= 64  # from the subnet asked for
        assert v6.startswith("fd32::")
        assert v6.endswith("/70")  # the /18's image: the prefix shifts as the range's does
        assert [r["dst"] for r in res["routes"]] == ["0.0.0.0/0", "::/0"]
        assert res["dns"]["nameservers"] == ["169.254.53.53", "fe80::53%eth0"]
    addr_b6 = res_b["ips"][1]["address"].split("/")[0]
    sent, got = tcp_transfer(lab, a, b, addr_b6, 2 << 20)
    assert sent == got
    assert sent.startswith(str(2 << 20))
    assert cni(lab, 1, "DEL", "aaa1", f"/run/netns/{a}") == (0, None)
    assert lab.in_ns(a, "ip", "link", "show", "eth0", check=False).returncode != 0
    # An IPv6 range the mesh does not have is refused in one line, nothing made.
    c = lab.container("pc")
    bad = [[{"subnet": "fd99::/64"}]]
    rc, err = cni(lab, 1, "ADD", "ccc3", f"/run/netns/{c}", ranges=bad)
    assert rc == 1
    check_error(err, 7)
    assert "fd99::/64 is not inside the mesh's IPv6 range" in err["msg"]
    assert lab.in_ns(c, "ip", "link", "show", "eth0", check=False).returncode != 0
