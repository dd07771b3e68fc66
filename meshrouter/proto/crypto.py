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
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import nacl.bindings as sodium  # importing it runs sodium_init(): CPU feature detection
import nacl.exceptions

# libsodium itself, through PyNaCl's cffi handle: the data plane calls it with
# pointers into buffers it reuses, so a seal or an open is one C call with no
# per-call checks, copies or allocations.
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

from meshrouter.base.constants import NONCE_HARD_LIMIT
from meshrouter.base.errors import BadPacket, LocalProtocolError

AeadFn = Callable[[bytes, bytes | None, bytes, bytes], bytes]


class Ptr(Protocol):
    """A cffi pointer into a buffer (see ``buffer_ptr``); ``ptr + n`` is n bytes on."""

    def __add__(self, offset: int, /) -> Ptr: ...


NULL: Ptr = _ffi.NULL
_COUNTER = struct.Struct("<Q")  # the counter is the first 8 bytes of the nonce


def buffer_ptr(buf: bytearray) -> Ptr:
    """A C pointer to ``buf``'s memory, for the ``*_ptr`` methods.  It pins the
    buffer: a bytearray with a live pointer refuses to be resized."""
    ptr: Ptr = _ffi.from_buffer(buf, require_writable=True)
    return ptr


def readonly_ptr(buf: bytes | bytearray | memoryview) -> Ptr:
    ptr: Ptr = _ffi.from_buffer(buf)
    return ptr


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

    __slots__ = ("_encrypt", "_key", "_nonce", "_nonce_ptr", "_pad", "_raw", "counter", "info")

    def __init__(self, suite: Suite, key: bytes) -> None:
        self.info = SUITES[suite]
        self._key = key[: self.info.key_bytes]
        self._encrypt = self.info.encrypt
        self._pad = bytes(self.info.nonce_bytes - 8)
        self._nonce = bytearray(self.info.nonce_bytes)
        self._nonce_ptr = buffer_ptr(self._nonce)
        self._raw = getattr(_lib, self.info.raw + "_encrypt")
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

    def seal_ptr(
        self, counter: int, out: Ptr, plaintext: Ptr, size: int, ad: Ptr, ad_size: int
    ) -> None:
        """Encrypt ``size`` bytes at ``plaintext`` to ``out`` (room for them and
        the tag).  ``out`` may equal ``plaintext``; ``ad`` must not overlap ``out``."""
        _COUNTER.pack_into(self._nonce, 0, counter)
        self._raw(out, NULL, plaintext, size, ad, ad_size, NULL, self._nonce_ptr, self._key)


class Opener:
    """Decrypts one direction of one plane.  Raises only ``BadPacket``."""

    __slots__ = ("_decrypt", "_key", "_nonce", "_nonce_ptr", "_pad", "_raw", "info")

    def __init__(self, suite: Suite, key: bytes) -> None:
        self.info = SUITES[suite]
        self._key = key[: self.info.key_bytes]
        self._decrypt = self.info.decrypt
        self._pad = bytes(self.info.nonce_bytes - 8)
        self._nonce = bytearray(self.info.nonce_bytes)
        self._nonce_ptr = buffer_ptr(self._nonce)
        self._raw = getattr(_lib, self.info.raw + "_decrypt")

    def open_untrusted(self, counter: int, ad: bytes, ciphertext: bytes) -> bytes:
        if len(ciphertext) < self.info.tag_bytes or not 0 <= counter < 1 << 64:
            raise BadPacket("ciphertext too short")
        nonce = counter.to_bytes(8, "little") + self._pad
        try:
            return self._decrypt(ciphertext, ad, nonce, self._key)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise BadPacket("authentication failed") from exc

    def open_ptr(
        self, counter: int, out: Ptr, ciphertext: Ptr, size: int, ad: Ptr, ad_size: int
    ) -> bool:
        """Decrypt ``size`` bytes of ciphertext (tag included, ``size`` at least
        the tag) to ``out``.  False if it is not authentic.  ``0 <= counter < 2**64``."""
        _COUNTER.pack_into(self._nonce, 0, counter)
        nonce, key = self._nonce_ptr, self._key
        rc: int = self._raw(out, NULL, NULL, ciphertext, size, ad, ad_size, nonce, key)
        return rc == 0


def raw_functions(suite: Suite) -> tuple[int, int]:
    """Addresses of libsodium's encrypt and decrypt functions for ``suite``
    (PyNaCl's own copy of libsodium), for the C data-plane loop to call."""
    raw = SUITES[suite].raw
    enc = _ffi.cast("uintptr_t", _ffi.addressof(_lib, raw + "_encrypt"))
    dec = _ffi.cast("uintptr_t", _ffi.addressof(_lib, raw + "_decrypt"))
    return int(enc), int(dec)
