"""mesh setup-cni, kube-sync: the CNI plugin and the Kubernetes DaemonSet."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from launcher.common import add_command
from launcher.parser import Parser
from meshrouter.contract.state import (
    atomic_write,
)


def cmd_setup_cni(a: argparse.Namespace) -> int:
    """Install the plugin where a runtime looks for it, and a conflist naming it."""
    bin_dir, conf_dir = Path(a.bin_dir), Path(a.conf_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    conf_dir.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent  # where the launcher package lives
    # Isolated (-I): the runtime's working directory and environment cannot
    # put other code in place of the plugin; only the package found at setup.
    program = f"import sys; sys.path.insert(0, {str(root)!r}); import launcher.cni as c; c.run()"
    shim = (
        "#!/bin/sh\n"
        "# The mesh's CNI plugin, installed by 'mesh setup-cni'.\n"
        f'cd / && exec {shlex.quote(sys.executable)} -I -c {shlex.quote(program)} "$@"\n'
    )
    if a.exec_in_router:
        # Kubernetes: the host has no Python of ours; the plugin runs in the
        # router container's mount namespace (hostPID shows its process),
        # in the host's network namespace, where the runtime called it.
        pid_file = Path(a.state_dir) / "router.pid"
        shim = (
            "#!/bin/sh\n"
            "# The mesh's CNI plugin, run inside the router's container ('mesh setup-cni').\n"
            f'pid=$(cat "{pid_file}" 2>/dev/null)\n'
            'if [ -z "$pid" ] || [ ! -d "/proc/$pid" ]; then\n'
            '  echo \'{"cniVersion":"1.0.0","code":11,"msg":"the mesh router is not running"}\'\n'
            "  exit 1\n"
            "fi\n"
            'exec nsenter -t "$pid" -m -- mesh-cni\n'
        )
    plugin = bin_dir / "mesh-cni"
    atomic_write(plugin, shim.encode(), 0o755)
    plugins: list[dict[str, Any]] = [
        {
            "type": "mesh-cni",
            "stateDir": str(a.state_dir),
            "defaultRoute": not a.no_default_route,
            "meshDns": True,
            "capabilities": {"ips": True},
        }
    ]
    if a.portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    conflist = {"cniVersion": "1.0.0", "name": a.network, "plugins": plugins}
    path = conf_dir / f"10-{a.network}.conflist"
    atomic_write(path, (json.dumps(conflist, indent=2) + "\n").encode(), 0o644)
    print(f"plugin {plugin}\nconfiguration {path}")
    return 0


def cmd_kube_sync(a: argparse.Namespace) -> int:
    from launcher import kube

    return kube.run(a.state_dir, a.port, a.interval, a.once)


def register(
    sub: argparse._SubParsersAction[Parser],
    common: Parser,
    config_defaults: dict[str, Any] | None,
) -> None:
    """Add this group's commands to ``sub``."""
    sp = add_command(
        sub,
        common,
        "setup-cni",
        description="Write BIN_DIR/mesh-cni (a small script that runs this installation's "
        "plugin, launcher.cni) and CONF_DIR/10-NETWORK.conflist naming it, with this "
        "host's state directory, so a CNI runtime (podman with the cni backend, "
        "containerd, CRI-O, kubelet) puts containers of network NETWORK on the mesh.",
    )
    sp.add_argument("--bin-dir", default="/opt/cni/bin", help="plugin directory (%(default)s)")
    sp.add_argument(
        "--conf-dir", default="/etc/cni/net.d", help="configuration directory (%(default)s)"
    )
    sp.add_argument("--network", default="mesh", help="network name (%(default)s)")
    sp.add_argument(
        "--no-default-route",
        action="store_true",
        help="no default route via this host (by default the host is exposed and is the gateway)",
    )
    sp.add_argument(
        "--portmap", action="store_true", help="chain the reference 'portmap' plugin after ours"
    )
    sp.add_argument(
        "--exec-in-router",
        action="store_true",
        help="the plugin enters the running router's mount namespace to run "
        "(for Kubernetes, where the node has no Python of ours)",
    )
    sp.set_defaults(func=cmd_setup_cni)

    sp = add_command(
        sub,
        common,
        "kube-sync",
        description="Every INTERVAL seconds: list the nodes (in-cluster service account, "
        "else ~/.kube/config), ask the router to connect to each node's InternalIP, and "
        "reclaim the address share of a peer whose node was deleted (rmpeer; done by "
        "the lowest-named reachable peer only). Needs the 'kubernetes' Python package.",
    )
    sp.add_argument("--interval", type=float, default=10.0, help="seconds (%(default)s)")
    sp.add_argument("--port", type=int, default=6783, help="the routers' port (%(default)s)")
    sp.add_argument("--once", action="store_true", help="one round, then exit")
    sp.set_defaults(func=cmd_kube_sync)
