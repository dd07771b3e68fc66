"""kube-sync against a stand-in Kubernetes API server (inside the lab), and the
CNI shim that runs the plugin inside the router's mount namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from meshrouter.testing.netlab import REPO, Lab, status

pytestmark = pytest.mark.netns

LabFactory = Callable[..., Lab]

# GET /api/v1/nodes answers with the nodes listed in the file argv[1] (rewritten by the test).
FAKE_API = """
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        nodes = json.load(open(sys.argv[1]))
        items = [{"metadata": {"name": n}, "status": {"addresses": [
            {"type": "Hostname", "address": n}, {"type": "InternalIP", "address": a}]}}
            for n, a in nodes.items()]
        body = json.dumps({"kind": "NodeList", "apiVersion": "v1", "metadata": {},
                           "items": items}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def test_kube_sync_connects_to_nodes_and_reclaims_a_deleted_nodes_share(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(2)
    for i in (1, 2):
        lab.launch(i, extra=("--nickname", f"node{i}", "--ipalloc-init", "1"))
    nodes = lab.tmp / "nodes.json"
    nodes.write_text(json.dumps({"node1": lab.addr(1), "node2": lab.addr(2)}))
    api = subprocess.Popen(
        ["ip", "netns", "exec", lab.host(1), sys.executable, "-c", FAKE_API, str(nodes)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert api.stdout is not None
        port = api.stdout.readline().strip()
        kubeconfig = lab.tmp / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            )
        )

        def sync() -> str:
            env = {"KUBECONFIG": str(kubeconfig)}
            proc = lab.mesh(1, "kube-sync", "--once", check=False, env=env)
            assert proc.returncode == 0, proc.stderr
            return proc.stdout

        assert f"targets: {lab.addr(2)}:6783" in sync()
        lab.wait_for(
            "h1-h2 established",
            lambda: any(c["state"] == "established" for c in status(lab, 1)["connections"]),
            timeout=20,
        )
        c = lab.container("c")
        lab.mesh(2, "attach", c)  # h2 gets a share of its own (a donation)
        sync()  # learns which peer runs on node2
        assert "node2" in (lab.state_dir(1) / "kube-peers.json").read_text()
        # node2 is deleted from the cluster, and its router is gone.
        nodes.write_text(json.dumps({"node1": lab.addr(1)}))
        lab.mesh(2, "stop")
        lab.wait_for(
            "h2 unreachable",
            lambda: (
                not any(p["reachable"] for p in status(lab, 1)["peers"] if p["nickname"] == "node2")
            ),
            timeout=20,
        )
        assert "node of peer" in sync()
        shares = {s["nickname"] for s in status(lab, 1)["ipam"]["shares"]}
        assert "node2" not in shares
    finally:
        api.kill()
        api.communicate()


def test_the_cni_shim_runs_the_plugin_inside_the_routers_mount_namespace(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(1)
    lab.launch(1)
    bindir = lab.tmp / "k8s-bin"
    lab.mesh(
        1,
        "setup-cni",
        "--exec-in-router",
        "--bin-dir",
        str(bindir),
        "--conf-dir",
        str(lab.tmp / "k8s-net.d"),
    )
    shim = bindir / "mesh-cni"
    assert "nsenter" in shim.read_text()
    c = lab.container("kpod")
    conf = json.loads((lab.tmp / "k8s-net.d" / "10-mesh.conflist").read_text())["plugins"][0]
    conf.update(cniVersion="1.0.0", name="mesh")

    def call(command: str) -> subprocess.CompletedProcess[str]:
        env = dict(
            os.environ,
            CNI_COMMAND=command,
            CNI_CONTAINERID="k8s0001",
            CNI_NETNS=f"/run/netns/{c}",
            CNI_IFNAME="eth0",
            CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=kpod",
            PYTHONPATH=str(REPO),
        )
        return subprocess.run(
            ["ip", "netns", "exec", lab.host(1), str(shim)],
            input=json.dumps(conf),
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    added = call("ADD")
    assert added.returncode == 0, added.stdout + added.stderr
    assert json.loads(added.stdout)["ips"][0]["address"].startswith("10.")
    assert call("DEL").returncode == 0
    lab.mesh(1, "stop")
    down = call("ADD")
    assert down.returncode == 1
    assert json.loads(down.stdout)["code"] == 11
