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

try:  # libsodium itself, through PyNaCl's cffi handle: no per-call checks or copies
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover - a PyNaCl without it: the public API still works
    _ffi = _lib = None

from .constants import NONCE_HARD_LIMIT
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
    raw: str  # libsodium's name for it, for the direct path


SUITES: dict[Suite, SuiteInfo] = {
    Suite.AEGIS128L: SuiteInfo(
        Suite.AEGIS128L,
        "aegis128l",
        sodium.crypto_aead_aegis128l_KEYBYTES,
        sodium.crypto_aead_aegis128l_NPUBBYTES,
        sodium.crypto_aead_aegis128l_ABYTES,
        sodium.crypto_aead_aegis128l_encrypt,
        sodium.crypto_aead_aegis128l_decrypt,
        "crypto_aead_aegis128l",
    ),
    Suite.XCHACHA20POLY1305: SuiteInfo(
        Suite.XCHACHA20POLY1305,
        "xchacha20poly1305",
        sodium.crypto_aead_xchacha20poly1305_ietf_KEYBYTES,
        sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
        sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES,
        sodium.crypto_aead_xchacha20poly1305_ietf_encrypt,
        sodium.crypto_aead_xchacha20poly1305_ietf_decrypt,
        "crypto_aead_xchacha20poly1305_ietf",
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

    __slots__ = ("_clen", "_encrypt", "_key", "_nonce", "_pad", "_raw", "counter", "info")

    def __init__(self, suite: Suite, key: bytes) -> None:
        self.info = SUITES[suite]
        self._key = key[: self.info.key_bytes]
        self._encrypt = self.info.encrypt
        self._pad = bytes(self.info.nonce_bytes - 8)
        self._nonce = bytearray(self.info.nonce_bytes)
        self._raw = getattr(_lib, self.info.raw + "_encrypt", None) if _lib else None
        self._clen = _ffi.new("unsigned long long *") if _ffi else None
        self.counter = 0

    def next_counter(self) -> int:
        n = self.counter
        if n >= NONCE_HARD_LIMIT:
            raise LocalProtocolError("session exhausted its nonces; reconnect to rekey")
        self.counter = n + 1
        return n

    def seal(self, counter: int, ad: bytes, plaintext: bytes) -> bytes:
        nonce = counter.to_bytes(8, "little") + self._pad
        return self._encrypt(plaintext, ad, nonce, self._key)

    def seal_into(
        self,
        counter: int,
        ad: bytes,
        plaintext: bytes | bytearray | memoryview,
        out: bytearray,
        offset: int,
    ) -> int:
        """Encrypt straight into ``out[offset:]`` (which must have room for the
        plaintext and the tag).  Returns the ciphertext length."""
        size = len(plaintext) + self.info.tag_bytes
        if self._raw is None:  # pragma: no cover - see the import above
            out[offset : offset + size] = self.seal(counter, ad, bytes(plaintext))
            return size
        self._nonce[:8] = counter.to_bytes(8, "little")
        rc = self._raw(
            _ffi.from_buffer(out, require_writable=True) + offset,
            self._clen,
            _ffi.from_buffer(plaintext),
            len(plaintext),
            ad,
            len(ad),
            _ffi.NULL,
            _ffi.from_buffer(self._nonce),
            self._key,
        )
        if rc != 0:  # pragma: no cover - libsodium does not fail to encrypt
            raise LocalProtocolError("encryption failed")
        return size


class Opener:
    """Decrypts one direction of one plane.  Raises only ``BadPacket``."""

    __slots__ = ("_decrypt", "_key", "_mlen", "_nonce", "_pad", "_raw", "info")

    def __init__(self, suite: Suite, key: bytes) -> None:
        self.info = SUITES[suite]
        self._key = key[: self.info.key_bytes]
        self._decrypt = self.info.decrypt
        self._pad = bytes(self.info.nonce_bytes - 8)
        self._nonce = bytearray(self.info.nonce_bytes)
        self._raw = getattr(_lib, self.info.raw + "_decrypt", None) if _lib else None
        self._mlen = _ffi.new("unsigned long long *") if _ffi else None

    def open_untrusted(self, counter: int, ad: bytes, ciphertext: bytes) -> bytes:
        if len(ciphertext) < self.info.tag_bytes or not 0 <= counter < 1 << 64:
            raise BadPacket("ciphertext too short")
        nonce = counter.to_bytes(8, "little") + self._pad
        try:
            return self._decrypt(ciphertext, ad, nonce, self._key)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise BadPacket("authentication failed") from exc

    def open_into_untrusted(
        self,
        counter: int,
        ad: bytes | memoryview,
        ciphertext: bytes | bytearray | memoryview,
        out: bytearray,
    ) -> memoryview:
        """Decrypt into ``out`` (room for the plaintext is the caller's business);
        returns a view of the plaintext.  Raises only ``BadPacket``."""
        size = len(ciphertext) - self.info.tag_bytes
        if size < 0 or not 0 <= counter < 1 << 64:
            raise BadPacket("ciphertext too short")
        if self._raw is None:  # pragma: no cover - see the import above
            plain = self.open_untrusted(counter, bytes(ad), bytes(ciphertext))
            return memoryview(plain)
        if len(out) < size:
            out.extend(bytes(size - len(out)))
        self._nonce[:8] = counter.to_bytes(8, "little")
        rc = self._raw(
            _ffi.from_buffer(out, require_writable=True),
            self._mlen,
            _ffi.NULL,
            _ffi.from_buffer(ciphertext),
            len(ciphertext),
            _ffi.from_buffer(ad),
            len(ad),
            _ffi.from_buffer(self._nonce),
            self._key,
        )
        if rc != 0:
            raise BadPacket("authentication failed")
        return memoryview(out)[:size]
