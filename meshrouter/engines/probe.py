"""Which container engines this host has: the one probe of each, and the one
reader of ``MESH_NO_DOCKER`` (set: behave as if no Docker or podman were
here; the tests' routers and clients use it).  Blocking, a few ms to a few
seconds: the daemon runs these in a thread."""

from __future__ import annotations

import os
import shutil
import subprocess

from meshrouter.engines import dockerapi


def engines_disabled() -> bool:
    return bool(os.environ.get("MESH_NO_DOCKER"))


def docker_answers(timeout: float = 5.0) -> bool:
    """True when a Docker engine answers (not just a client on PATH).

    Asks ``docker version`` for the server's version: podman's ``docker``
    command answers that too (its ``docker info --format`` does not).  With
    no ``docker`` command (the router image), asks the engine's socket."""
    if engines_disabled():
        return False
    if shutil.which("docker") is None:
        return dockerapi.available()
    try:
        proc = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def podman_available() -> bool:
    return not engines_disabled() and shutil.which("podman") is not None
