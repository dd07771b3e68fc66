"""Finding a container's network namespace: a named netns, or a Docker container."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from meshrouter.engines import dockerapi, probe


class ContainerError(Exception):
    """A one-line reason for the operator."""


@dataclass(frozen=True)
class Container:
    name: str  # what the operator typed
    kind: str  # "netns" or "docker"
    ns_path: str  # /run/netns/NAME or /proc/PID/ns/net
    ns_ref: str  # what 'ip link set ... netns' takes: NAME or PID
    ident: str  # a stable key: netns name or docker id
    hostname: str = ""  # its name for DNS: the netns or Docker container name


NETNS_DIR = "/run/netns"


@functools.cache
def docker_engine_available() -> bool:
    """``probe.docker_answers``, asked once per command."""
    return probe.docker_answers()


def _inspect_api(name: str) -> Container | None:
    try:
        doc = dockerapi.inspect(name)
    except dockerapi.DockerApiError as exc:
        raise ContainerError(str(exc)) from None
    if doc is None:
        return None
    pid = int((doc.get("State") or {}).get("Pid") or 0)
    if pid == 0:
        raise ContainerError(f"container {name} is not running: start it first (docker start)")
    cname = str(doc.get("Name") or name).lstrip("/")
    return Container(name, "docker", f"/proc/{pid}/ns/net", str(pid), str(doc["Id"]), cname)


def _inspect(engine: str, name: str) -> Container | None:
    """``name`` (name, short or full id) on one engine's command line; None if unknown."""
    if engine == "docker" and shutil.which("docker") is None:
        return _inspect_api(name)
    proc = subprocess.run(
        [
            engine,
            "inspect",
            "--type",
            "container",
            "--format",
            "{{.State.Pid}} {{.Id}} {{.Name}}",
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    pid, cid, *rest = proc.stdout.split()
    cname = (rest[0] if rest else name).lstrip("/")
    if pid == "0":
        raise ContainerError(f"container {name} is not running: start it first ({engine} start)")
    kind = "docker" if engine == "docker" else "podman"
    return Container(name, kind, f"/proc/{pid}/ns/net", pid, cid, cname)


def find_container(kind: str, ident: str) -> Container | None:
    """A Docker or podman container by id; None if its engine does not know
    it.  Raises ContainerError if it is not running or the engine does not
    answer (then nobody can tell)."""
    if kind == "docker" and docker_engine_available():
        return _inspect("docker", ident)
    if kind == "podman" and podman_available():
        return _inspect("podman", ident)
    raise ContainerError(f"no {kind} engine answers here")


@dataclass(frozen=True)
class Endpoint:
    """A Docker container's interface on one of its networks."""

    network: str
    address: str  # CIDR
    mac: str


def docker_endpoints(ident: str) -> list[Endpoint]:
    """The addresses a Docker container has on its networks (none when it or
    the engine is gone)."""
    if shutil.which("docker") is None:
        try:
            doc = dockerapi.inspect(ident)
        except dockerapi.DockerApiError:
            return []
        nets: Any = ((doc or {}).get("NetworkSettings") or {}).get("Networks") or {}
    else:
        proc = subprocess.run(
            [
                "docker",
                "inspect",
                "--type",
                "container",
                "--format",
                "{{json .NetworkSettings.Networks}}",
                ident,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            nets = json.loads(proc.stdout) if proc.returncode == 0 else {}
        except ValueError:
            nets = {}
    out = []
    for name, net in (nets or {}).items():
        if isinstance(net, dict) and net.get("IPAddress"):
            cidr = f"{net['IPAddress']}/{net.get('IPPrefixLen') or 32}"
            out.append(Endpoint(str(name), cidr, str(net.get("MacAddress") or "")))
    return out


def podman_available() -> bool:
    return probe.podman_available()


def resolve(name: str) -> Container:
    """A named netns, else a container of the Docker engine, else of podman."""
    if not name or "/" in name or name in (".", ".."):
        raise ContainerError(f"{name!r} is not a valid container or namespace name")
    path = os.path.join(NETNS_DIR, name)
    if os.path.exists(path):
        return Container(name, "netns", path, name, name, name)
    engines = [
        e for e, ok in (("docker", docker_engine_available()), ("podman", podman_available())) if ok
    ]
    for engine in engines:
        found = _inspect(engine, name)
        if found is not None:
            return found
    if engines:
        looked = " or ".join(f"'{e} ps'" for e in engines)
        raise ContainerError(
            f"no container or network namespace named {name!r}: check {looked} or 'ip netns list'"
        )
    raise ContainerError(
        f"no network namespace named {name!r} (and no Docker engine or podman here): "
        f"create it with 'ip netns add {name}'"
    )
