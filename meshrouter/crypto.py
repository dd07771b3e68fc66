"""Cipher suites, per-direction sealing with counter nonces, and key derivation.

Every (connection, plane, direction) has its own key, so counter nonces that
start at zero can never repeat under the same key: the control plane and the
data plane, and the two directions of each, live in disjoint key spaces.

Suites are negotiated in the handshake: the first suite in the initiator's
preference order that both peers support.  AEGIS-128L is several times faster
than XChaCha20-Poly1305 on large messages; XChaCha20-Poly1305 is the portable
fallback.  The legacy ``SecretBox`` API copies and pads and is never used.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import nacl.bindings as sodium
import nacl.exceptions

from .constants import REKEY_AFTER_MESSAGES
from .errors import BadPacket, LocalProtocolError

AeadFn = Callable[[bytes, bytes | None, bytes, bytes], bytes]


class Suite(IntEnum):
    XCHACHA20POLY1305 = 1
    AEGIS128L = 2


@dataclass(frozen=True, slots=True)
class SuiteInfo:
    suite: Suite
    name: str
    key_bytes: int
    nonce_bytes: int
    tag_bytes: int
    encrypt: AeadFn
    decrypt: AeadFn


SUITES: dict[Suite, SuiteInfo] = {
    Suite.AEGIS128L: SuiteInfo(
        Suite.AEGIS128L,
        "aegis128l",
        sodium.crypto_aead_aegis128l_KEYBYTES,
        sodium.crypto_aead_aegis128l_NPUBBYTES,
        sodium.crypto_aead_aegis128l_ABYTES,
        sodium.crypto_aead_aegis128l_encrypt,
        sodium.crypto_aead_aegis128l_decrypt,
    ),
    Suite.XCHACHA20POLY1305: SuiteInfo(
        Suite.XCHACHA20POLY1305,
        "xchacha20poly1305",
        sodium.crypto_aead_xchacha20poly1305_ietf_KEYBYTES,
        sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
        sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES,
        sodium.crypto_aead_xchacha20poly1305_ietf_encrypt,
        sodium.crypto_aead_xchacha20poly1305_ietf_decrypt,
    ),
}

# Our preference, best first.
PREFERENCE: tuple[Suite, ...] = (Suite.AEGIS128L, Suite.XCHACHA20POLY1305)
MAX_TAG_BYTES = max(s.tag_bytes for s in SUITES.values())


def suites_mask(suites: tuple[Suite, ...] = PREFERENCE) -> int:
    mask = 0
    for s in suites:
        mask |= 1 << int(s)
    return mask


def choose_suite(initiator_mask: int, responder_mask: int) -> Suite | None:
    common = initiator_mask & responder_mask
    for s in PREFERENCE:
        if common & (1 << int(s)):
            return s
    return None


def kdf(key: bytes, label: bytes, size: int = 32) -> bytes:
    """Derive ``size`` bytes from ``key`` for the purpose named by ``label``."""
    return hashlib.blake2b(label, key=key, digest_size=size).digest()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


class Sealer:
    """Encrypts one direction of one plane: counter nonces from zero, never reused."""

    __slots__ = ("_encrypt", "_key", "_pad", "counter", "info")

    def __init__(self, suite: Suite, key: bytes) -> None:
        self.info = SUITES[suite]
        self._key = key[: self.info.key_bytes]
        self._encrypt = self.info.encrypt
        self._pad = bytes(self.info.nonce_bytes - 8)
        self.counter = 0

    def next_counter(self) -> int:
        n = self.counter
        if n >= REKEY_AFTER_MESSAGES:
            raise LocalProtocolError("session exhausted its nonces; reconnect to rekey")
        self.counter = n + 1
        return n

    def seal(self, counter: int, ad: bytes, plaintext: bytes) -> bytes:
        nonce = counter.to_bytes(8, "little") + self._pad
        return self._encrypt(plaintext, ad, nonce, self._key)


class Opener:
    """Decrypts one direction of one plane.  Raises only ``BadPacket``."""

    __slots__ = ("_decrypt", "_key", "_pad", "info")

    def __init__(self, suite: Suite, key: bytes) -> None:
        self.info = SUITES[suite]
        self._key = key[: self.info.key_bytes]
        self._decrypt = self.info.decrypt
        self._pad = bytes(self.info.nonce_bytes - 8)

    def open_untrusted(self, counter: int, ad: bytes, ciphertext: bytes) -> bytes:
        if len(ciphertext) < self.info.tag_bytes or not 0 <= counter < 1 << 64:
            raise BadPacket("ciphertext too short")
        nonce = counter.to_bytes(8, "little") + self._pad
        try:
            return self._decrypt(ciphertext, ad, nonce, self._key)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise BadPacket("authentication failed") from exc
