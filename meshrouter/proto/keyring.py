"""The mesh's pre-shared keys across a password rotation (sans-IO).

A rotation gives the mesh a new key under the next *epoch*.  The peer where
``mesh password rotate`` runs adopts it, and every peer passes it on to its
neighbours (control message ROTATE, sealed under each connection's session
keys); a peer adopts a key whose epoch is above its own.  Then, for an
overlap *window* measured from when each peer adopted the key:

* as responder, a peer accepts the new key and the one before it;
* as initiator, it uses the new key towards peers known to hold it (they
  said so with ROTATE) and the old one towards the others;
* connections made under the old key to a peer that holds the new one are
  re-keyed by reconnecting them (the mesh core does that).

When the window ends the old key is *retired*: a peer that still uses it is
refused with a reason naming the rotation (never silently, never by telling
anyone which key it tried).  Retired keys are remembered (the last few) for
that message only.

Keys are 32-byte PSKs (Argon2id of the password, ``handshake.derive_psk``);
this module never sees passwords.  ``to_json``/``from_json`` persist it;
``now`` is the caller's monotonic clock, ``wall`` its wall clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from meshrouter.base.errors import BadPacket

DEFAULT_WINDOW = 3600.0  # an hour for every peer to learn the key and re-key
MAX_RETIRED = 4
ROTATE = struct.Struct("!I32sI")  # epoch, key, window seconds


def encode_rotate(epoch: int, key: bytes, window: float) -> bytes:
    return ROTATE.pack(epoch, key, int(window))


def decode_rotate_untrusted(payload: bytes) -> tuple[int, bytes, float]:
    """A ROTATE message: (epoch, key, window).  Raises only BadPacket."""
    if len(payload) != ROTATE.size:
        raise BadPacket("ROTATE message of the wrong length")
    epoch, key, window = ROTATE.unpack(payload)
    if epoch == 0 or not 1 <= window <= 30 * 86400:
        raise BadPacket("ROTATE with epoch 0 or a window out of range")
    return epoch, key, float(window)


@dataclass
class KeyRing:
    current: bytes
    epoch: int = 0
    previous: bytes | None = None
    window_ends: float = 0.0  # ``now`` when ``previous`` is retired
    window: float = DEFAULT_WINDOW
    retired: list[bytes] = field(default_factory=list)
    holders: dict[bytes, int] = field(default_factory=dict)  # peer name -> epoch it holds

    # -- what the handshake asks ---------------------------------------------

    def accepted(self) -> list[bytes]:
        """Keys a responder accepts, the newest first."""
        return [self.current] + ([self.previous] if self.previous is not None else [])

    def refused(self) -> list[bytes]:
        """Keys refused with a reason: rotated out."""
        return list(self.retired)

    def for_peer(self, name: bytes) -> bytes:
        """The key an initiator uses towards ``name``."""
        if self.previous is not None and self.holders.get(name, 0) < self.epoch:
            return self.previous  # it may not have the new one yet: it accepts the old
        return self.current

    def epoch_of(self, key: bytes) -> int:
        if key == self.current:
            return self.epoch
        if key == self.previous:
            return self.epoch - 1
        return -1

    # -- changes -------------------------------------------------------------

    def rotate(self, key: bytes, now: float, window: float = DEFAULT_WINDOW) -> int:
        """A new key, here (``mesh password rotate``).  Returns its epoch."""
        if key in self.accepted() or key in self.retired:
            raise ValueError("that password is the mesh's current or a recent one")
        self._adopt(self.epoch + 1, key, now, window)
        return self.epoch

    def receive(self, sender: bytes, epoch: int, key: bytes, window: float, now: float) -> bool:
        """A neighbour's ROTATE: it holds ``epoch``.  True if we adopted a new key
        (then pass it on)."""
        self.holders[sender] = max(self.holders.get(sender, 0), epoch)
        if epoch <= self.epoch or key in self.retired:
            return False  # nothing new (or an old key again: never taken back)
        if key == self.current:  # we were given this key by hand: its number
            self.epoch = epoch
            return False
        self._adopt(epoch, key, now, window)
        return True

    def _adopt(self, epoch: int, key: bytes, now: float, window: float) -> None:
        if self.previous is not None:
            self._retire(self.previous)
        self.previous = self.current
        self.current = key
        self.epoch = epoch
        self.window = window
        self.window_ends = now + window

    def _retire(self, key: bytes) -> None:
        if key not in self.retired:
            self.retired.append(key)
            del self.retired[:-MAX_RETIRED]

    def tick(self, now: float) -> bool:
        """Retire the old key when the window ends.  True if it did."""
        if self.previous is not None and now >= self.window_ends:
            self._retire(self.previous)
            self.previous = None
            return True
        return False

    def in_window(self) -> bool:
        return self.previous is not None

    # -- persistence -----------------------------------------------------------

    def to_json(self, now: float, wall: float) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "current": self.current.hex(),
            "previous": self.previous.hex() if self.previous is not None else None,
            "window_ends_wall": wall + (self.window_ends - now) if self.previous else None,
            "window": self.window,
            "retired": [k.hex() for k in self.retired],
        }

    @classmethod
    def from_json(cls, doc: Any, launch_key: bytes, now: float, wall: float) -> KeyRing:
        """The ring saved before a restart; the launch password's key when there
        is none (or it is unreadable).  A launch key that is newer than what was
        saved (the operator gave the new password file) is taken as current."""
        try:
            ring = cls(
                current=bytes.fromhex(doc["current"]),
                epoch=int(doc["epoch"]),
                previous=bytes.fromhex(doc["previous"]) if doc.get("previous") else None,
                window=float(doc.get("window") or DEFAULT_WINDOW),
                retired=[bytes.fromhex(k) for k in doc.get("retired") or []],
            )
            ends = doc.get("window_ends_wall")
            ring.window_ends = now + (float(ends) - wall) if ends is not None else 0.0
        except (KeyError, TypeError, ValueError, AttributeError):
            return cls(current=launch_key)
        if launch_key not in ring.accepted() and launch_key not in ring.retired:
            ring.rotate(launch_key, now, ring.window)  # a new password file at launch
        return ring
