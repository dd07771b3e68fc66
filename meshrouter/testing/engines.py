"""Real container engines (Docker, podman) for tests and benches, changing
nothing of the machine's.

``Dockerd(root)`` is Debian's dockerd with its own socket, data and exec
roots, no bridge, no iptables, no masquerading, in a mount namespace of its
own with a private ``/run`` whose ``docker/plugins`` is a directory of the
test's (a router serves the ``mesh`` driver into it; no engine of the
machine sees it).  Given a lab host, its "host network" is that host's
namespace (``--network host`` containers and the router image live there).
``stop`` removes every container and leaves no process, mount or directory.
``Podman(root)`` runs podman from a lab host's namespace with storage under
``root`` and a containers.conf per host (runc, the CNI backend).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from meshrouter.testing.netlab import Lab, sh

START_TIMEOUT = 60.0
ROUTER = "meshrouter"  # the router's container, as 'mesh launch --engine docker' names it


class Dockerd:
    def __init__(self, root: Path, netns: str | None = None, live_restore: bool = False) -> None:
        self.root = root
        self.netns = netns
        self.live_restore = live_restore  # containers run on while the engine is down
        self.sock = root / "docker.sock"
        self.plugins = root / "plugins"  # /run/docker/plugins, as the engine sees it
        self.run = root / "run"  # /run, as the engine sees it
        self.host = f"unix://{self.sock}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, DOCKER_HOST=self.host)

    def start(self) -> Dockerd:
        self.root.mkdir(parents=True, exist_ok=True)
        self.plugins.mkdir(exist_ok=True)
        self.run.mkdir(mode=0o755, exist_ok=True)
        daemon = [
            "dockerd",
            "--iptables=false",
            "--ip-masq=false",
            "--ip6tables=false",
            "--bridge=none",
            "--data-root",
            f"{self.root}/data",
            "--exec-root",
            f"{self.root}/exec",
            "--pidfile",
            f"{self.root}/docker.pid",
            "-H",
            self.host,
            *(["--live-restore"] if self.live_restore else []),
        ]
        # Its own mount namespace with a private /run (shared below it, so that
        # '-v /run/netns:/run/netns:shared' is accepted): a directory of the
        # test's, so that what dockerd and containerd make there (the shims'
        # sockets under /run/containerd) is there again for the engine of a
        # restart (live-restore finds its containers); the router's plugin
        # directory of the test is its /run/docker/plugins.
        script = (
            # the machine's mounts under /run (/run/netns among them) out of sight
            "for m in $(awk '$5 ~ \"^/run($|/)\" {print $5}' /proc/self/mountinfo | sort -r);"
            ' do umount -l "$m" 2>/dev/null; done; '
            'mount --bind "$1" /run && mount --make-rshared /run && '
            'mkdir -p /run/docker/plugins /run/netns && mount --bind "$0" /run/docker/plugins '
            '&& shift && exec "$@"'
        )
        # nsenter, not 'ip netns exec', which remounts /sys and so hides the
        # cgroup tree runc needs.
        enter = [] if self.netns is None else ["nsenter", f"--net=/run/netns/{self.netns}"]
        cmd = [
            *enter,
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            str(self.plugins),
            str(self.run),
            *daemon,
        ]
        log = open(self.root / "dockerd.log", "wb")  # noqa: SIM115 - the daemon's, closed by it
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while self.docker("version", check=False).returncode != 0:
            if time.monotonic() > deadline or self._proc.poll() is not None:
                tail = (self.root / "dockerd.log").read_text(errors="replace")[-800:]
                self.stop()
                raise RuntimeError(f"dockerd did not start: {tail}")
            time.sleep(0.2)
        return self

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return sh("docker", *args, env=self.env, check=check, timeout=timeout)

    def _terminate(self, wait: float) -> None:
        """SIGTERM to the daemon, SIGKILL to its group after ``wait`` seconds."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def restart(self, live_restore: bool | None = None) -> None:
        """The engine stopped and started again with the same roots.  Without
        live-restore its containers stop with it, and those with a restart
        policy come back with new namespaces; with it, they run on
        undisturbed, in the namespaces they had."""
        if self._proc is not None and self._proc.poll() is None:
            self._terminate(60)
        self._proc = None
        if live_restore is not None:  # the next engine's, as an operator changes daemon.json
            self.live_restore = live_restore
        self.start()

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            # Containers first, the router last: while it runs, Docker's calls
            # to its 'mesh' driver are answered, not retried for half a minute.
            listed = self.docker("ps", "-a", "--format", "{{.ID}} {{.Names}}", check=False)
            rows = [ln.split() for ln in listed.stdout.splitlines() if ln.strip()]
            for last in (False, True):
                ids = [r[0] for r in rows if (r[-1] == ROUTER) == last]
                if ids:
                    self.docker("rm", "-f", *ids, check=False)
            self._terminate(30)
        self._proc = None
        # Left by a daemon killed hard: its containers' processes and mounts.
        subprocess.run(["pkill", "-9", "-f", f"{self.root}/exec"], capture_output=True)
        subprocess.run(["umount", "-R", "-l", f"{self.root}/data"], capture_output=True)
        subprocess.run(["umount", "-R", "-l", f"{self.root}/exec"], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Podman:
    root: Path

    def env(self, lab: Lab, i: int) -> dict[str, str]:
        return dict(
            os.environ,
            CONTAINERS_CONF=str(self.conf(lab, i)),
            CONTAINERS_STORAGE_CONF=str(self.root / "storage.conf"),
        )

    def conf(self, lab: Lab, i: int) -> Path:
        """containers.conf of host i: runc, the CNI backend, host i's plugin and conflist."""
        d = lab.tmp / f"cni-h{i}"
        path = d / "containers.conf"
        if not path.exists():
            d.mkdir(parents=True, exist_ok=True)
            path.write_text(
                "[containers]\n"
                'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
                '[engine]\nruntime = "runc"\n'
                "[network]\n"
                'network_backend = "cni"\n'
                f'cni_plugin_dirs = ["/usr/lib/cni", "{d / "bin"}"]\n'
                f'network_config_dir = "{d / "net.d"}"\n'
            )
        return path

    def setup_cni(self, lab: Lab, i: int, *extra: str) -> None:
        d = lab.tmp / f"cni-h{i}"
        self.conf(lab, i)
        lab.mesh(
            i, "setup-cni", "--bin-dir", str(d / "bin"), "--conf-dir", str(d / "net.d"), *extra
        )

    def __call__(
        self, lab: Lab, i: int, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["nsenter", f"--net=/run/netns/{lab.host(i)}", "podman", *args],
            capture_output=True,
            text=True,
            env=self.env(lab, i),
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def netns(self, lab: Lab, i: int, name: str) -> str:
        """The name under /run/netns of a container's network namespace."""
        key = self(lab, i, "inspect", "-f", "{{.NetworkSettings.SandboxKey}}", name).stdout
        return Path(key.strip()).name

    def address(self, lab: Lab, i: int, name: str) -> str:
        out = self(lab, i, "exec", name, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        return out.split("inet ")[1].split("/")[0]

    def remove_all(self, lab: Lab, i: int) -> None:
        self(lab, i, "rm", "-af", "-t", "0", check=False)

    @classmethod
    def create(cls, root: Path, rootfs_tar: Path, image: str) -> Podman:
        """Storage of its own under ``root``, with ``rootfs_tar`` imported as ``image``."""
        root.mkdir(parents=True, exist_ok=True)
        (root / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n'
        )
        subprocess.run(
            ["podman", "import", str(rootfs_tar), image],
            check=True,
            env=dict(os.environ, CONTAINERS_STORAGE_CONF=str(root / "storage.conf")),
            timeout=300,
            capture_output=True,
        )
        return cls(root)

    def destroy(self) -> None:
        """Every container, image and layer of this storage gone, and its directory."""
        subprocess.run(
            ["podman", "system", "reset", "-f"],
            env=dict(os.environ, CONTAINERS_STORAGE_CONF=str(self.root / "storage.conf")),
            capture_output=True,
            check=False,
            timeout=300,
        )
        shutil.rmtree(self.root, ignore_errors=True)


ROOTFS_PACKAGES = "iproute2,python3,python3-venv,nftables,util-linux"


def make_rootfs(tar: Path) -> Path:
    """A Debian root filesystem as a tar (mmdebstrap, from the machine's
    mirror settings; no registry): the test containers' image and the router
    image's base.  What test containers use, and what that base needs."""
    subprocess.run(
        [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={ROOTFS_PACKAGES}",
            "--customize-hook=rm -rf $1/usr/share/doc $1/usr/share/man $1/var/cache/apt",
            "bookworm",
            str(tar),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return tar
