"""Every file the running router keeps in its state directory, in one place.

Each is written whole and atomically (``contract.state.atomic_write``) and
read back forgivingly: a file that is missing or unreadable gives the
default, so a corrupt file costs what it held, never the start.

    router.pid     the daemon's pid (``mesh stop`` and the CNI shim read it)
    targets.json   the connection targets, kept across a restart
    keys.json      the mesh key ring (a rotation survives restarts)
    dns.json       our own DNS entries
    expose.json    what 'mesh expose' gave this host
    revocations.pem  the mesh CA's revocations this router holds (certificates)
    password-retired  the mesh moved to certificates: the password is refused
    ipam.db        IPAM's ring and allocations (SQLite; ``ipam.store``)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from meshrouter.contract.certfiles import read_revocations, write_pem
from meshrouter.contract.state import atomic_write, load_json
from meshrouter.contract.status import ExposeStatus
from meshrouter.dns.records import Entry
from meshrouter.proto.cert import PEM_REVOCATION, Revocation
from meshrouter.proto.keyring import KeyRing

log = logging.getLogger("meshrouter")


class StateFiles:
    def __init__(self, state_dir: Path | None) -> None:
        self.dir = state_dir  # None: a router that keeps nothing (tests)

    def write_pid(self) -> None:
        if self.dir is not None:
            atomic_write(self.dir / "router.pid", f"{os.getpid()}\n".encode(), 0o644)

    def save_targets(self, targets: list[str]) -> None:
        if self.dir is not None:
            atomic_write(self.dir / "targets.json", json.dumps(sorted(targets)).encode())

    def load_targets(self) -> list[str]:
        if self.dir is None:
            return []
        data = load_json(self.dir / "targets.json", [])
        return [t for t in data if isinstance(t, str)] if isinstance(data, list) else []

    def load_keys(self, current: bytes, now: float, wall: float) -> KeyRing | None:
        """The key ring of an earlier run, with the launch password's key taken in."""
        if self.dir is None or not (self.dir / "keys.json").exists():
            return None
        return KeyRing.from_json(load_json(self.dir / "keys.json", None), current, now, wall)

    def save_keys(self, ring: KeyRing, now: float, wall: float) -> None:
        if self.dir is not None:
            doc = ring.to_json(now, wall)
            atomic_write(self.dir / "keys.json", json.dumps(doc).encode(), 0o600)

    def load_revocations(self) -> list[Revocation]:
        """The revocations this router holds (their signatures are checked by
        the mesh core); an unreadable file is set aside, never fatal."""
        path = self.dir / "revocations.pem" if self.dir is not None else None
        if path is None or not path.exists():
            return []
        try:
            return read_revocations(str(path))
        except ValueError as exc:
            log.error("%s; set aside as %s.bad", exc, path.name)
            with contextlib.suppress(OSError):
                os.replace(path, path.with_name(path.name + ".bad"))
            return []

    def save_revocations(self, revocations: list[Revocation]) -> None:
        if self.dir is not None:
            write_pem(self.dir / "revocations.pem", PEM_REVOCATION, [r.raw for r in revocations])

    def password_retired(self) -> bool:
        return self.dir is not None and (self.dir / "password-retired").exists()

    def save_password_retired(self) -> None:
        if self.dir is not None:
            atomic_write(self.dir / "password-retired", b"certificates only\n", 0o644)

    def save_dns(self, entries: list[Entry]) -> None:
        """Our live entries (tombstones need not survive: a restarted origin
        retracts what it no longer holds when it hears of it)."""
        if self.dir is not None:
            rows = [[e.container, e.name, e.addr, e.version] for e in entries if not e.tombstone]
            atomic_write(self.dir / "dns.json", json.dumps(rows).encode())

    def load_dns(self, me: bytes) -> list[Entry]:
        rows = load_json(self.dir / "dns.json", []) if self.dir is not None else []
        out = []
        if isinstance(rows, list):
            for row in rows:
                with contextlib.suppress(TypeError, ValueError):
                    container, name, addr, version = row
                    out.append(Entry(me, str(container), str(name), int(addr), int(version)))
        return out

    def load_expose(self) -> ExposeStatus:
        saved = load_json(self.dir / "expose.json", None) if self.dir is not None else None
        if isinstance(saved, dict) and isinstance(saved.get("addresses"), list):
            return {
                "addresses": [str(a) for a in saved["addresses"]],
                "masquerade": bool(saved.get("masquerade")),
            }
        return {"addresses": [], "masquerade": False}

    def save_expose(self, exposed: ExposeStatus) -> None:
        if self.dir is not None:
            atomic_write(self.dir / "expose.json", json.dumps(exposed).encode())
