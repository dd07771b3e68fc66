"""The daemon's own care of attached containers: one that starts again is
re-attached, one that is gone is forgotten (``attachments.restart``, the code
``mesh reattach`` and ``mesh prune`` run too), in a worker thread; what they
ask of the mesh comes back to trio through ``LocalAccess``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from meshrouter.attachments import attach as attach_mod
from meshrouter.attachments import restart
from meshrouter.base.errors import OperatorError
from meshrouter.engines import probe

if TYPE_CHECKING:
    from meshrouter.daemon.commands import Commands

log = logging.getLogger("meshrouter.engine")

ENGINE_SILENT = 600.0  # a container of an engine silent this long is taken for gone
PRUNE_TRIES = 6  # a removed container's record is looked at again this often ...
PRUNE_RETRY = 1.0  # ... this far apart (a stopped container's stays: it may restart)
PODMAN_LOOK = 3.0  # podman announces no starts: its recorded containers are looked at this often


class LocalAccess:
    """``restart.MeshAccess`` for a worker thread: each call is the daemon's
    own command, run back in trio; a refusal is attach's ``IpamRefused``."""

    def __init__(self, commands: Commands) -> None:
        self.c = commands

    @staticmethod
    def _run(fn: Any, *args: Any) -> Any:
        try:
            return trio.from_thread.run(fn, *args)
        except OperatorError as exc:
            raise attach_mod.IpamRefused(str(exc)) from None

    def allocate(self, container: str, ns_path: str, subnet: str | None) -> str:
        return str(self._run(self.c.allocate, container, ns_path, subnet))

    def claim(self, cidr: str, container: str, ns_path: str) -> str:
        return str(self._run(self.c.claim, cidr, container, ns_path))

    def release(self, container: str, addrs: list[str] | None = None) -> None:
        try:
            trio.from_thread.run_sync(self.c.release, container, addrs)
        except OperatorError as exc:
            log.warning("addresses of %s not released: %s", container, exc)

    def holder(self, address: str) -> str | None:
        result: str | None = trio.from_thread.run_sync(self.c.holder, address)
        return result

    def add_name(self, container: str, names: list[str], addrs: list[str]) -> None:
        trio.from_thread.run_sync(self.c.dns_add, container, names, addrs)


class Containers:
    def __init__(self, state_dir: Path, settings: restart.Settings, commands: Commands) -> None:
        self.registry = attach_mod.Registry(state_dir)
        self.settings = settings
        self.access = LocalAccess(commands)
        self._pruning = False
        self._silent_since: float | None = None  # since when no engine answered

    async def started(self, cid: str) -> None:
        """A container started: re-attached if it was attached before."""
        try:
            told = await trio.to_thread.run_sync(
                restart.reattach, self.registry, cid, self.settings, self.access
            )
        except restart.RestartError as exc:
            log.warning("container %s started again, but re-attaching failed: %s", cid[:12], exc)
            return
        except Exception:  # one container's failure is that container's
            log.exception("container %s started again; re-attaching it failed", cid[:12])
            return
        for line in told.warnings:
            log.warning("container %s: %s", cid[:12], line)
        for line in told.lines:
            log.info("container %s started again: %s", cid[:12], line)

    async def catch_up(self) -> None:
        """Recorded containers without their link that run now (started while
        the router or its event stream was down: a reboot, an engine restart)
        are attached again, as a start event would have them."""
        waiting = await trio.to_thread.run_sync(restart.detached_records, self.registry)
        for ident in waiting:
            await self.started(ident)

    async def follow_podman(self) -> None:
        """podman has no daemon whose events the router could follow (systemd
        or an operator runs ``podman start``; its restart policy is podman's
        own process): every ``PODMAN_LOOK`` seconds, the recorded podman
        containers without their link that run again are attached again.
        Only those records cost a look (``podman inspect`` each); none, none."""
        while True:
            await trio.sleep(PODMAN_LOOK)
            try:
                waiting = await trio.to_thread.run_sync(
                    restart.detached_records, self.registry, ("podman",)
                )
            except Exception:  # a look that failed is logged; the next one comes
                log.exception("looking for restarted podman containers failed")
                continue
            for ident in waiting:
                await self.started(ident)

    async def destroyed(self, cid: str) -> None:
        """The engine removed a container: if it was attached here, its
        record goes, then its addresses and name (the namespace poll would
        find it too, a little later)."""
        rec = await trio.to_thread.run_sync(attach_mod.forget, self.registry, cid)
        if rec is None:
            return
        gone = self.access.c.release(cid)
        log.info(
            "container %s (%s) was removed: its record and %s released",
            rec.container, cid[:12], " ".join(gone) or "no address",
        )  # fmt: skip

    async def still_there(self, idents: set[str]) -> set[str]:
        """Which of these IPAM idents (``PEER/CONTAINER``), whose namespaces
        vanished, are Docker or podman containers that still exist: stopped,
        restarting, or of an engine that does not answer now.  Their
        addresses, names and records stay until they are removed."""
        return await trio.to_thread.run_sync(self._still_there, idents)

    def _still_there(self, idents: set[str]) -> set[str]:
        if probe.engines_disabled():
            return set()  # no engine to ask: a vanished namespace is a removal
        records = self.registry.read()
        kept = set()
        silent = False
        for ident in idents:
            rec = records.get(ident.split("/", 1)[-1])
            if rec is None or rec.kind not in ("docker", "podman"):
                continue
            state = attach_mod.container_state(rec)
            if state == "unknown":  # its engine does not answer (restarting?)
                silent = True
                if time.monotonic() - (self._silent_since or time.monotonic()) > ENGINE_SILENT:
                    log.warning("no %s engine answers: %s released", rec.kind, rec.container)
                    continue
            if state != "gone":
                kept.add(ident)
        if not silent:
            self._silent_since = None
        elif self._silent_since is None:
            self._silent_since = time.monotonic()
        return kept

    async def prune(self) -> None:
        """Containers were found gone: their records (and anti-spoofing rules)
        go.  The engine may still list a container it is removing: while
        records without a link are left, it looks again, a few times."""
        if self._pruning:
            return  # the one running looks again
        self._pruning = True
        try:
            for attempt in range(PRUNE_TRIES):
                lines = await trio.to_thread.run_sync(restart.prune, self.registry, self.access)
                for line in lines:
                    log.info("%s", line)
                left = await trio.to_thread.run_sync(restart.unlinked, self.registry)
                if not left or attempt == PRUNE_TRIES - 1:
                    break
                await trio.sleep(PRUNE_RETRY)
        except Exception:
            log.exception("forgetting removed containers failed")
        finally:
            self._pruning = False
