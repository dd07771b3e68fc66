"""Persistence of IPAM state: SQLite in WAL mode in the state directory.

Every save is one transaction, so a crash or ``kill -9`` leaves either the
old state or the new one.  The range is stored too: a state directory made
for another range is refused rather than silently mixed.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from meshrouter.base.errors import MeshError
from meshrouter.ipam.reclaim import AllocSet, Reclaimer
from meshrouter.ipam.ring import Allocation, Ipam, Token


class IpamStoreError(MeshError):
    pass


class IpamStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from None

    def _unreadable(self, exc: Exception) -> IpamStoreError:
        return IpamStoreError(
            f"{self.path} is unreadable ({exc}): restore it, or move it aside to start "
            "this host's IPAM afresh (the ring comes back from the peers; attached "
            "containers keep their addresses, but attach them again to hold them)"
        )

    def _open(self) -> None:
        path = self.path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS ring (
                start INTEGER PRIMARY KEY, owner BLOB NOT NULL, version INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS allocs (
                addr INTEGER PRIMARY KEY, ident TEXT NOT NULL, ns_path TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS remote_claims (
                ident TEXT NOT NULL, owner BLOB NOT NULL, addr INTEGER NOT NULL,
                PRIMARY KEY (ident, addr));
            CREATE TABLE IF NOT EXISTS remote_ns (ident TEXT PRIMARY KEY, ns_path TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS known_allocs (
                owner BLOB PRIMARY KEY, version INTEGER NOT NULL, allocs TEXT NOT NULL);
            """
        )
        self.saved_version = -1

    def load(
        self, ipam: Ipam, reclaimer: Reclaimer
    ) -> tuple[dict[str, list[tuple[bytes, int]]], dict[str, str]]:
        """Fill ``ipam`` and ``reclaimer`` from disk; returns the remote claims
        (ident -> [(owner, addr)]) and the namespaces of their containers
        (ident -> path).  Raises IpamStoreError for a file SQLite cannot read."""
        try:
            return self._load(ipam, reclaimer)
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from None

    def _load(
        self, ipam: Ipam, reclaimer: Reclaimer
    ) -> tuple[dict[str, list[tuple[bytes, int]]], dict[str, str]]:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'range'").fetchone()
        if row is not None and row[0] != str(ipam.network):
            raise IpamStoreError(
                f"{self.path} holds addresses of range {row[0]}, not {ipam.network}: "
                "launch with the same --ipalloc-range, or move the state directory away"
            )
        tokens = {
            start: Token(bytes(owner), version)
            for start, owner, version in self.db.execute("SELECT start, owner, version FROM ring")
        }
        if tokens:
            ipam.merge(tokens)
        for addr, ident, ns_path in self.db.execute("SELECT addr, ident, ns_path FROM allocs"):
            ipam.allocs[addr] = Allocation(addr, ident, ns_path)
        remote: dict[str, list[tuple[bytes, int]]] = {}
        for ident, owner, addr in self.db.execute("SELECT ident, owner, addr FROM remote_claims"):
            remote.setdefault(ident, []).append((bytes(owner), addr))
        remote_ns = dict(self.db.execute("SELECT ident, ns_path FROM remote_ns").fetchall())
        row = self.db.execute("SELECT value FROM meta WHERE key = 'allocs_version'").fetchone()
        reclaimer.version = int(row[0]) if row is not None else 0
        for owner, version, allocs in self.db.execute(
            "SELECT owner, version, allocs FROM known_allocs"
        ):
            held = {int(a): str(i) for a, i in json.loads(allocs).items()}
            reclaimer.known[bytes(owner)] = AllocSet(bytes(owner), version, held)
        self.saved_version = ipam.version
        return remote, remote_ns

    def save(
        self,
        ipam: Ipam,
        remote: dict[str, list[tuple[bytes, int]]],
        remote_ns: dict[str, str],
        reclaimer: Reclaimer,
    ) -> None:
        """One transaction.  Raises IpamStoreError (the disk is full, the
        file went bad): nothing of this save is kept, the last one stays."""
        try:
            self._save(ipam, remote, remote_ns, reclaimer)
        except sqlite3.Error as exc:
            raise IpamStoreError(f"cannot save {self.path}: {exc}") from None
        self.saved_version = ipam.version

    def _save(
        self,
        ipam: Ipam,
        remote: dict[str, list[tuple[bytes, int]]],
        remote_ns: dict[str, str],
        reclaimer: Reclaimer,
    ) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('range', ?)", (str(ipam.network),))
            db.execute("DELETE FROM ring")
            db.executemany(
                "INSERT INTO ring VALUES (?, ?, ?)",
                [(s, t.owner, t.version) for s, t in ipam.tokens.items()],
            )
            db.execute("DELETE FROM allocs")
            db.executemany(
                "INSERT INTO allocs VALUES (?, ?, ?)",
                [(a.addr, a.ident, a.ns_path) for a in ipam.allocs.values()],
            )
            db.execute("DELETE FROM remote_claims")
            db.executemany(
                "INSERT INTO remote_claims VALUES (?, ?, ?)",
                [(i, o, a) for i, claims in remote.items() for o, a in claims],
            )
            db.execute("DELETE FROM remote_ns")
            db.executemany("INSERT INTO remote_ns VALUES (?, ?)", list(remote_ns.items()))
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('allocs_version', ?)",
                (str(reclaimer.version),),
            )
            db.execute("DELETE FROM known_allocs")
            db.executemany(
                "INSERT INTO known_allocs VALUES (?, ?, ?)",
                [(k.owner, k.version, json.dumps(k.allocs)) for k in reclaimer.known.values()],
            )
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # none may be open any more
                db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()
