"""ConnectionPair: two control connections back to back in memory (like h11's helper)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any

from meshrouter.proto import cert
from meshrouter.proto.control import ConnectionClosed, ControlConnection, Event
from meshrouter.proto.handshake import Credentials, Identity, PskSource, derive_psk


@functools.cache
def psk(password: bytes) -> bytes:
    return derive_psk(password)


def identity(n: int, **kw: Any) -> Identity:
    base = Identity(
        name=bytes([0x02, 0, 0, 0, 0, n]), nickname=f"host{n}", uid=1000 + n, udp_port=6783
    )
    return dataclasses.replace(base, **kw)


def seeded_key(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


class ConnectionPair:
    """Two control connections wired back to back in memory (like h11's helper)."""

    def __init__(
        self,
        *,
        password_a: bytes = b"secret",
        password_b: bytes = b"secret",
        ident_a: Identity | None = None,
        ident_b: Identity | None = None,
        now: float = 0.0,
        keys_a: PskSource | None = None,
        keys_b: PskSource | None = None,
        creds_a: Credentials | None = None,
        creds_b: Credentials | None = None,
    ) -> None:
        self.now = now
        self.a = ControlConnection(
            initiator=True,
            identity=ident_a or identity(1),
            psk=keys_a if keys_a is not None else psk(password_a),
            ephemeral_private=seeded_key("a"),
            recv_index=11,
            now=now,
            credentials=creds_a,
        )
        self.b = ControlConnection(
            initiator=False,
            identity=ident_b or identity(2),
            psk=keys_b if keys_b is not None else psk(password_b),
            ephemeral_private=seeded_key("b"),
            recv_index=22,
            now=now,
            credentials=creds_b,
        )
        self.events: dict[str, list[Event]] = {"a": [], "b": []}

    def pump(self) -> None:
        """Move bytes both ways until neither side has anything to send."""
        for _ in range(100):
            ab = self.a.data_to_send()
            ba = self.b.data_to_send()
            if not ab and not ba:
                break
            if ab:
                self.b.receive_data(ab, self.now)
            if ba:
                self.a.receive_data(ba, self.now)
        for name, conn in (("a", self.a), ("b", self.b)):
            while (ev := conn.next_event()) is not None:
                self.events[name].append(ev)

    def closed_reasons(self, side: str) -> list[str]:
        return [e.reason for e in self.events[side] if isinstance(e, ConnectionClosed)]


class MeshCa:
    """A mesh CA for tests, with deterministic keys."""

    def __init__(self, label: str = "ca", not_after: int = 2**40) -> None:
        self.seed = seeded_key(label)
        self.cert = cert.issue(
            self.seed,
            name=bytes(6),
            nickname=label,
            public_key=cert.public_key_of(self.seed),
            not_before=0,
            not_after=not_after,
            is_ca=True,
        )

    def host(
        self, n: int, *, not_before: int = 0, not_after: int = 2**40, key: str = ""
    ) -> tuple[cert.Certificate, bytes]:
        """Host n's certificate (for ``identity(n)``) and key seed."""
        seed = seeded_key(key or f"host{n}-key")
        ident = identity(n)
        c = cert.issue(
            self.seed,
            name=ident.name,
            nickname=ident.nickname,
            public_key=cert.public_key_of(seed),
            not_before=not_before,
            not_after=not_after,
        )
        return c, seed

    def creds(
        self, n: int, *, trust: list[cert.Certificate] | None = None, wall: float = 1e9, **kw: Any
    ) -> Credentials:
        c, seed = self.host(n, **kw)
        return Credentials(c, seed, cert.Trust.of(trust or [self.cert]), wall)
