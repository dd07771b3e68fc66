"""Real Docker engines for tests, changing nothing of the machine's.

``Dockerd(root)`` is Debian's dockerd with its own socket, data and exec
roots, no bridge, no iptables, no masquerading, in a mount namespace of its
own with a private ``/run`` whose ``docker/plugins`` is a directory of the
test's (a router serves the ``mesh`` driver into it; no engine of the
machine sees it).  Given a lab host, its "host network" is that host's
namespace (``--network host`` containers and the router image live there).
``stop`` removes every container and leaves no process, mount or directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from meshrouter.testing.netlab import sh

START_TIMEOUT = 60.0
ROUTER = "meshrouter"  # the router's container, as 'mesh launch --engine docker' names it


class Dockerd:
    def __init__(self, root: Path, netns: str | None = None) -> None:
        self.root = root
        self.netns = netns
        self.sock = root / "docker.sock"
        self.plugins = root / "plugins"  # /run/docker/plugins, as the engine sees it
        self.host = f"unix://{self.sock}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, DOCKER_HOST=self.host)

    def start(self) -> Dockerd:
        self.root.mkdir(parents=True, exist_ok=True)
        self.plugins.mkdir(exist_ok=True)
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
        ]
        # Its own mount namespace with a private /run (shared below it, so that
        # '-v /run/netns:/run/netns:shared' is accepted): what dockerd makes
        # there (/run/docker/plugins...) goes with it, and the router's plugin
        # directory of the test is its /run/docker/plugins.
        script = (
            # the machine's mounts under /run (/run/netns among them) out of sight
            "for m in $(awk '$5 ~ \"^/run($|/)\" {print $5}' /proc/self/mountinfo | sort -r);"
            ' do umount -l "$m" 2>/dev/null; done; '
            "mount -t tmpfs -o mode=755 tmpfs /run && mount --make-rshared /run && "
            'mkdir -p /run/docker/plugins /run/netns && mount --bind "$0" /run/docker/plugins '
            '&& exec "$@"'
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

    def restart(self) -> None:
        """The engine stopped (its containers with it, as without live-restore)
        and started again with the same roots: containers with a restart
        policy come back with new namespaces."""
        if self._proc is not None and self._proc.poll() is None:
            self._terminate(60)
        self._proc = None
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
