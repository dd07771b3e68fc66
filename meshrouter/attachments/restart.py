"""What a container's restart or removal asks of its attachment, for whoever
notices it: the daemon (it follows the engine's events and its IPAM finds
namespaces gone) or the operator (``mesh reattach``, ``mesh prune``).

``reattach`` puts a recorded container that started again back on the mesh
with the addresses and name it had; a Docker container started with
addresses from this router's ``mesh`` driver is recorded like an attached
one (``adopt``).  ``prune`` forgets containers removed without a detach.
Each returns what to tell (``Told``: lines for a log or the terminal, and
warnings); the mesh itself is
reached through a ``MeshAccess``: the router's API for the client, the
router's own services for the daemon.  Blocking: the daemon runs these in a
thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from meshrouter.attachments import attach as attach_mod
from meshrouter.engines.containers import (
    ContainerError,
    docker_endpoints,
    find_container,
    resolve,
)
from meshrouter.host.netdev import link_exists


@dataclass(frozen=True)
class Settings:
    """Where attachments go on this host."""

    bridge: str
    mesh_range: str
    mtu: int
    dns_address: str | None = None  # None: the router serves no DNS
    dns_domain: str = ""
    mesh_range6: str = ""  # --ipalloc-range6 ("": none)


class MeshAccess(attach_mod.AddressSource, Protocol):
    """Addresses (``AddressSource``), and what else a restart asks of the mesh."""

    def holder(self, address: str) -> str | None:
        """Which container of this host holds ``address`` (its API name), if any."""

    def add_name(self, container: str, names: list[str], addrs: list[str]) -> None:
        """Name ``container`` in the mesh's DNS.  Raises ValueError or ApiError."""


class RestartError(Exception):
    """One line: what could not be done for this container."""


class Told:
    """What a restart did (``lines``) and what went wrong on the way (``warnings``)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.warnings: list[str] = []


def register_name(
    registry: attach_mod.Registry,
    rec: attach_mod.Attachment,
    settings: Settings,
    mesh: MeshAccess,
    name: str,
    addrs: list[str],
) -> str | None:
    """The container's name in the mesh's DNS (none when ``name`` is empty),
    and its resolv.conf (a named netns).  A warning, if that failed."""
    assert settings.dns_address is not None
    try:
        if name:
            mesh.add_name(rec.ident, [name], addrs)
        attach_mod.write_resolv_conf(registry, rec, settings.dns_address, settings.dns_domain)
    except (ValueError, RuntimeError, OSError) as exc:  # ApiError is a RuntimeError
        return f"{rec.container} attached, but not named in DNS: {exc}"
    return None


def reattach(
    registry: attach_mod.Registry, container: str, settings: Settings, mesh: MeshAccess
) -> Told:
    """A recorded container started again: attached again with the address
    and name it had.  Nothing to do for one still attached or that cannot
    restart.  Raises RestartError."""
    rec = attach_mod.find(registry, container)
    if rec is None:
        return adopt(registry, container, settings, mesh)
    if link_exists(rec.host_veth) or rec.kind not in ("docker", "podman"):
        return Told()  # still attached, or not a container that can restart
    try:
        c = find_container(rec.kind, rec.ident)  # its new namespace
    except ContainerError as exc:
        raise RestartError(f"{rec.container}: {exc}") from None
    if c is None:
        raise RestartError(f"{rec.container}: its {rec.kind} engine no longer knows it")
    with registry.locked() as records:
        records.pop(rec.ident, None)
    try:
        new, _ = attach_mod.attach(
            registry,
            rec.container,
            [attach_mod.Want(cidr=x) for x in rec.addresses],
            bridge=settings.bridge,
            mesh_range=settings.mesh_range,
            mtu=settings.mtu,
            ipam=mesh,
            dns_address=settings.dns_address,
            container=c,
            guard_port=rec.guard,
            allow_outside=True,
            range6=settings.mesh_range6,
        )
    except attach_mod.AttachError as exc:
        with registry.locked() as records:  # kept: its address stays its own, for the next try
            records.setdefault(rec.ident, rec)
        raise RestartError(f"{rec.container}: {exc}") from None
    told = Told()
    if settings.dns_address and rec.hostname:
        warning = register_name(registry, new, settings, mesh, rec.hostname, new.cidrs)
        told.warnings += [warning] if warning else []
    told.lines.append(f"{rec.container} attached again with {' '.join(new.addresses)}")
    return told


def adopt(
    registry: attach_mod.Registry, container: str, settings: Settings, mesh: MeshAccess
) -> Told:
    """A Docker container started with addresses from this router's 'mesh'
    driver (``docker run --network mesh``): named in DNS, and recorded like an
    attached container (``mesh ps``, anti-spoofing rules; prune forgets it
    once it is gone)."""
    told = Told()
    try:
        c = resolve(container)
    except ContainerError:
        return told
    if c.kind != "docker":
        return told
    for ep in docker_endpoints(c.ident):
        key = mesh.holder(ep.address.split("/")[0])
        if not isinstance(key, str) or not key.startswith("docker-net/"):
            continue  # not an address of our driver
        try:
            ifname, host = attach_mod.host_end(c, ep.address)
        except attach_mod.AttachError as exc:
            told.warnings.append(f"{c.hostname}: {exc}")
            continue
        rec = attach_mod.Attachment(
            c.hostname, "docker-net", key, c.ns_path, host, [ep.address], ep.mac, c.hostname,
            ifname=ifname,
        )  # fmt: skip
        with registry.locked() as records:
            records[key] = rec
        if settings.dns_address and c.hostname:
            warning = register_name(registry, rec, settings, mesh, c.hostname, rec.cidrs)
            told.warnings += [warning] if warning else []
        told.lines.append(f"{c.hostname} on Docker network {ep.network} with {ep.address}")
    return told


def prune(registry: attach_mod.Registry, mesh: attach_mod.AddressSource | None) -> list[str]:
    """Forget containers removed without a detach (their records, rules and
    resolv.conf); undo attaches killed half-way."""
    out = []
    for rec in attach_mod.prune(registry, mesh):
        if rec.state == attach_mod.PENDING:
            out.append(f"{rec.container}: an interrupted attach was undone")
        else:
            out.append(f"{rec.container} is gone: its record and anti-spoofing rules removed")
    return out


def unlinked(registry: attach_mod.Registry) -> int:
    """How many records have lost their link: containers being removed (the
    engine may take a moment to forget them), or stopped ones."""
    return sum(not link_exists(r.host_veth) for r in registry.read().values())


def detached_records(
    registry: attach_mod.Registry, kinds: tuple[str, ...] = ("docker", "podman")
) -> list[str]:
    """The Docker and podman containers (of ``kinds``) recorded here that run
    without their link: started again while nobody re-attached them (the
    router or the engine's event stream was down; podman, whose starts
    nobody announces).  Stopped ones wait for their start."""
    out = []
    for r in registry.read().values():
        if r.kind not in kinds or r.state == attach_mod.PENDING:
            continue
        if not link_exists(r.host_veth) and attach_mod.container_state(r) == "running":
            out.append(r.ident)
    return out
