"""The control-connection handshake (sans-IO).

Both sides send HELLO as soon as the TCP connection is up; the side that
dialled is the *initiator*.  A HELLO carries the protocol version range, the
peer's name (a MAC-like id), nickname, a random 64-bit uid, its UDP port, the
index it wants to see in UDP packets addressed to it, the cipher suites it
supports, and a fresh X25519 public key.

After both HELLOs, each side knows::

    transcript = BLAKE2b(initiator_hello || responder_hello)
    prk        = BLAKE2b(key=psk, X25519(eph_self, eph_peer) || transcript)

where ``psk`` is Argon2id(password) with a fixed mesh salt.  The password
itself never crosses the wire.  Each side sends CONFIRM, a MAC of the
transcript under a key derived from ``prk`` with a label naming its role; a
peer that does not know the password cannot produce it, and a passive observer
cannot test guesses against it because it does not know the X25519 secret.
From ``prk`` we derive four keys: control and data, each direction.

The initiator sends its CONFIRM at once, under the key it holds for this
peer; the responder sends its own only after the initiator's has matched
one of the keys it accepts (during a password rotation, the new and the
previous one: ``keyring``), so no HELLO ever says which key is in use.

With certificates (``cert``), each HELLO also says how its sender can
authenticate (extension AUTH: password, certificate, or both, while a mesh
moves to certificates); when both sides hold certificates they are used and
the password is not::

    prk     = BLAKE2b(key=CERT_LABEL, X25519(eph_self, eph_peer) || transcript)
    CONFIRM = mac(32) || cert_len(u16) || certificate || signature(64)

where the signature is the sender's long-term Ed25519 key over its role and
the transcript (so it binds both ephemeral keys: no replay, and the data keys
stay forward secret), and the MAC, under ``prk``, covers the transcript and
the certificate's fingerprint.  Each side checks the other's certificate
(``cert.Trust.verify``: our CA, in its validity window give or take the
clock skew, not revoked), that it names the peer the HELLO says, and the
signature; a failure is refused with a REJECT naming the reason, both ways.

A peer whose version range does not overlap ours, or that supports none of our
suites, gets a REJECT frame with the reason, and both sides log it; so does
an initiator whose CONFIRM matches no key (wrong password) or a key rotated
out (the reason names the rotation).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Protocol

import nacl.bindings as sodium
import nacl.pwhash

from meshrouter.base.constants import MAGIC, PROTOCOL_MAX_VERSION, PROTOCOL_MIN_VERSION
from meshrouter.base.errors import BadPacket, HandshakeRefused, LocalProtocolError
from meshrouter.base.names import format_name
from meshrouter.proto.cert import (
    SIGNATURE_BYTES,
    Certificate,
    CertRefused,
    Trust,
    decode_cert_untrusted,
    sign,
    signature_ok,
)
from meshrouter.proto.crypto import Suite, choose_suite, constant_time_equal, kdf, suites_mask

CERT_SIGNED = b"meshrouter certificate handshake signature v1 "
_MESH_SALT = hashlib.blake2b(b"meshrouter mesh password salt v1", digest_size=16).digest()


def derive_psk(password: bytes) -> bytes:
    """Stretch the mesh password into the 32-byte pre-shared key (slow on purpose)."""
    if not password:
        raise LocalProtocolError("the mesh password must not be empty")
    return bytes(
        nacl.pwhash.argon2id.kdf(
            32,
            password,
            _MESH_SALT,
            opslimit=nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE,
            memlimit=nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE,
        )
    )


class FrameType(IntEnum):
    HELLO = 1
    CONFIRM = 2
    REJECT = 3


_HELLO = struct.Struct("!8sBBHQ6sHI32sB")
CONFIRM_BYTES = 32
MAX_NICKNAME = 64


@dataclass(frozen=True, slots=True)
class Identity:
    """What a router says about itself in its HELLO."""

    name: bytes  # 6 bytes, shown as aa:bb:cc:dd:ee:ff
    nickname: str
    uid: int
    udp_port: int
    version_min: int = PROTOCOL_MIN_VERSION
    version_max: int = PROTOCOL_MAX_VERSION
    suites: int = suites_mask()
    ipalloc_range: str = ""  # every peer of a mesh must use the same one
    auth: int = 1  # AUTH_PASSWORD | AUTH_CERT: how it can authenticate


AUTH_PASSWORD = 1
AUTH_CERT = 2
CERT_LABEL = hashlib.blake2b(b"meshrouter certificate handshake v1", digest_size=32).digest()


@dataclass(frozen=True, slots=True)
class Credentials:
    """A host's certificate, its key (the 32-byte Ed25519 seed), what it trusts,
    and the wall clock (seconds since the epoch) to judge validity by."""

    cert: Certificate
    seed: bytes
    trust: Trust
    wall: float


@dataclass(frozen=True, slots=True)
class Hello:
    identity: Identity
    recv_index: int
    ephemeral_public: bytes


def encode_reject(reason: str) -> bytes:
    return bytes([FrameType.REJECT]) + reason.encode()[:190]


EXT_IPALLOC_RANGE = 1  # HELLO extension: type(1) len(1) value, after the nickname
EXT_AUTH = 2  # one byte: AUTH_PASSWORD | AUTH_CERT; absent: the password only


def encode_hello(hello: Hello) -> bytes:
    ident = hello.identity
    nick = ident.nickname.encode()[:MAX_NICKNAME]
    ext = b""
    if ident.ipalloc_range:
        raw = ident.ipalloc_range.encode()[:255]
        ext = bytes([EXT_IPALLOC_RANGE, len(raw)]) + raw
    if ident.auth != AUTH_PASSWORD:
        ext += bytes([EXT_AUTH, 1, ident.auth & 0xFF])
    return (
        bytes([FrameType.HELLO])
        + _HELLO.pack(
            MAGIC,
            ident.version_min,
            ident.version_max,
            ident.suites,
            ident.uid,
            ident.name,
            ident.udp_port,
            hello.recv_index,
            hello.ephemeral_public,
            len(nick),
        )
        + nick
        + ext
    )


def decode_hello_untrusted(body: bytes) -> Hello:
    """Parse a HELLO frame body (type byte included).  Raises only BadPacket."""
    if len(body) < 1 + _HELLO.size or body[0] != FrameType.HELLO:
        raise BadPacket("not a HELLO frame")
    (magic, vmin, vmax, suites, uid, name, udp_port, recv_index, eph, nick_len) = (
        _HELLO.unpack_from(body, 1)
    )
    if magic != MAGIC:
        raise BadPacket("not a meshrouter peer (bad magic)")
    if vmin > vmax:
        raise BadPacket("bad version range")
    nick_raw = body[1 + _HELLO.size : 1 + _HELLO.size + nick_len]
    if len(nick_raw) != nick_len or nick_len > MAX_NICKNAME:
        raise BadPacket("truncated nickname")
    try:
        nick = nick_raw.decode()
    except UnicodeDecodeError as exc:
        raise BadPacket("nickname is not UTF-8") from exc
    # After the nickname: extensions, type(1) len(1) value; unknown ones are skipped.
    ipalloc_range = ""
    auth = AUTH_PASSWORD
    pos = 1 + _HELLO.size + nick_len
    while pos + 2 <= len(body):
        etype, elen = body[pos], body[pos + 1]
        value = body[pos + 2 : pos + 2 + elen]
        if len(value) != elen:
            raise BadPacket("truncated HELLO extension")
        if etype == EXT_IPALLOC_RANGE:
            try:
                ipalloc_range = value.decode("ascii")
            except UnicodeDecodeError as exc:
                raise BadPacket("IP range is not ASCII") from exc
        elif etype == EXT_AUTH:
            if elen != 1 or not value[0] & (AUTH_PASSWORD | AUTH_CERT):
                raise BadPacket("bad AUTH extension")
            auth = value[0] & (AUTH_PASSWORD | AUTH_CERT)
        pos += 2 + elen
    ident = Identity(name, nick, uid, udp_port, vmin, vmax, suites, ipalloc_range, auth)
    return Hello(ident, recv_index, eph)


@dataclass(frozen=True, slots=True)
class SessionKeys:
    suite: Suite
    version: int
    control_send: bytes
    control_recv: bytes
    data_send: bytes
    data_recv: bytes


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    peer: Identity
    peer_recv_index: int  # put this index in UDP packets we send to the peer
    keys: SessionKeys
    psk: bytes = b""  # the mesh key the two sides proved they share (password mode)
    cert: Certificate | None = None  # the peer's, checked (certificate mode)


class PskSource(Protocol):
    """The mesh's keys (``keyring.KeyRing``): the one an initiator uses towards a
    peer, those a responder accepts, those it refuses as rotated out."""

    def for_peer(self, name: bytes) -> bytes: ...
    def accepted(self) -> list[bytes]: ...
    def refused(self) -> list[bytes]: ...


@dataclass(frozen=True, slots=True)
class OnePsk:
    """A mesh with one key (no rotation)."""

    psk: bytes

    def for_peer(self, name: bytes) -> bytes:
        return self.psk

    def accepted(self) -> list[bytes]:
        return [self.psk] if self.psk else []

    def refused(self) -> list[bytes]:
        return []


NO_PASSWORD = OnePsk(b"")  # placeholder; ``accepted`` and ``refused`` say: none


ROTATED_OUT = (
    "the mesh password was rotated and this peer still uses a retired one: "
    "give it the new password file ('mesh launch --password-file NEW')"
)


class HandshakeState(Enum):
    AWAIT_HELLO = "await-hello"
    AWAIT_CONFIRM = "await-confirm"
    DONE = "done"
    FAILED = "failed"


class Handshake:
    """One side of the handshake.

    ``ephemeral_private`` (32 random bytes) and ``recv_index`` come from the
    caller so that the core holds no source of randomness.  ``psk`` is the
    mesh key, or a ``PskSource`` while a rotation is under way: then the
    initiator picks its key by the responder's name, and the responder sends
    its CONFIRM only once the initiator's has matched one key it accepts (a
    key it refused as rotated out gets a REJECT that says so).
    """

    def __init__(
        self,
        *,
        initiator: bool,
        identity: Identity,
        psk: bytes | PskSource,
        ephemeral_private: bytes,
        recv_index: int,
        credentials: Credentials | None = None,
    ) -> None:
        keys = OnePsk(psk) if isinstance(psk, bytes) else psk
        if len(ephemeral_private) != 32 or any(len(k) != 32 for k in keys.accepted()):
            raise LocalProtocolError("ephemeral key and psk must be 32 bytes")
        if bool(identity.auth & AUTH_CERT) != (credentials is not None):
            raise LocalProtocolError("AUTH_CERT is advertised exactly when there are credentials")
        self.credentials = credentials
        self._method = AUTH_PASSWORD
        self._cert_state: tuple[bytes, bytes, SessionKeys] | None = None  # prk, transcript
        self.initiator = initiator
        self.identity = identity
        self._keys = keys
        self._candidates: list[tuple[bytes, bytes, bytes, SessionKeys | None]] = []
        self._eph_private = ephemeral_private
        self._hello = Hello(identity, recv_index, sodium.crypto_scalarmult_base(ephemeral_private))
        self._hello_bytes = encode_hello(self._hello)
        self.state = HandshakeState.AWAIT_HELLO
        self._peer_hello: Hello | None = None

    def initial_frames(self) -> list[bytes]:
        return [self._hello_bytes]

    def receive_frame_untrusted(self, body: bytes) -> tuple[list[bytes], HandshakeResult | None]:
        """Handle one frame body.  Returns frames to send and, when done, the result.

        Raises ``HandshakeRefused`` (a reason for the operator) or ``BadPacket``.
        """
        if self.state in (HandshakeState.DONE, HandshakeState.FAILED):
            raise LocalProtocolError(f"handshake is {self.state.value}")
        try:
            return self._receive(body)
        except (BadPacket, HandshakeRefused):
            self.state = HandshakeState.FAILED
            raise

    def _receive(self, body: bytes) -> tuple[list[bytes], HandshakeResult | None]:
        if not body:
            raise BadPacket("empty handshake frame")
        if body[0] == FrameType.REJECT:
            reason = body[1:200].decode("utf-8", "replace")
            raise HandshakeRefused(f"peer refused the connection: {reason}")
        if self.state is HandshakeState.AWAIT_HELLO:
            hello = decode_hello_untrusted(body)
            return self._on_hello(hello, body), None
        if self._cert_state is not None:
            return self._receive_cert_confirm(body)
        if body[0] != FrameType.CONFIRM or len(body) != 1 + CONFIRM_BYTES:
            raise BadPacket("expected a CONFIRM frame")
        # Every candidate key is tried (no early exit: the time taken says nothing).
        matched = [c for c in self._candidates if constant_time_equal(body[1:], c[1])]
        if not matched:
            # The responder tells the initiator, which has no other way to know
            # (it says nothing an online guesser does not learn from the close).
            raise HandshakeRefused(
                "authentication failed: the peer does not know the mesh password "
                "(wrong password on one side?)",
                tell_peer=not self.initiator,
            )
        psk, _, my_confirm, keys = matched[0]
        if keys is None:  # a key rotated out: say so, and nothing else
            raise self._reject(ROTATED_OUT)
        peer = self._peer_hello
        assert peer is not None
        self.state = HandshakeState.DONE
        out = [] if self.initiator else [bytes([FrameType.CONFIRM]) + my_confirm]
        return out, HandshakeResult(peer.identity, peer.recv_index, keys, psk)

    @staticmethod
    def _reject(reason: str) -> HandshakeRefused:
        return HandshakeRefused(reason, tell_peer=True)

    def _on_hello(self, hello: Hello, body: bytes) -> list[bytes]:
        me, peer = self.identity, hello.identity
        lo = max(me.version_min, peer.version_min)
        hi = min(me.version_max, peer.version_max)
        if lo > hi:
            raise self._reject(
                f"incompatible protocol version: we speak {me.version_min}..{me.version_max}, "
                f"peer speaks {peer.version_min}..{peer.version_max}"
            )
        if peer.uid == me.uid:
            raise self._reject("connection to self")
        if me.ipalloc_range and peer.ipalloc_range and me.ipalloc_range != peer.ipalloc_range:
            raise self._reject(
                f"different IP allocation range: one side uses {me.ipalloc_range}, the other "
                f"{peer.ipalloc_range} (every peer needs the same --ipalloc-range)"
            )
        if self.initiator:
            suite = choose_suite(me.suites, peer.suites)
        else:
            suite = choose_suite(peer.suites, me.suites)
        if suite is None:
            raise self._reject("no cipher suite in common")
        try:
            shared = sodium.crypto_scalarmult(self._eph_private, hello.ephemeral_public)
        except Exception as exc:  # libsodium refuses low-order points
            raise BadPacket("bad ephemeral public key") from exc
        first, second = (self._hello_bytes, body) if self.initiator else (body, self._hello_bytes)
        transcript = hashlib.blake2b(first + second, digest_size=32).digest()
        mine, theirs = ("i", "r") if self.initiator else ("r", "i")

        def session(prk: bytes) -> SessionKeys:
            return SessionKeys(
                suite=suite,
                version=hi,
                control_send=kdf(prk, f"control-{mine}2{theirs}".encode()),
                control_recv=kdf(prk, f"control-{theirs}2{mine}".encode()),
                data_send=kdf(prk, f"data-{mine}2{theirs}".encode()),
                data_recv=kdf(prk, f"data-{theirs}2{mine}".encode()),
            )

        self._method = self._choose_method(peer)
        if self._method == AUTH_CERT:
            prk = hashlib.blake2b(shared + transcript, key=CERT_LABEL, digest_size=64).digest()
            self._cert_state = (prk, transcript, session(prk))
            self._peer_hello = hello
            self.state = HandshakeState.AWAIT_CONFIRM
            return [self._cert_confirm()] if self.initiator else []

        def candidate(psk: bytes, usable: bool) -> tuple[bytes, bytes, bytes, SessionKeys | None]:
            prk = hashlib.blake2b(shared + transcript, key=psk, digest_size=64).digest()
            keys = session(prk)
            expected = kdf(prk, b"confirm-" + theirs.encode() + transcript)
            my_confirm = kdf(prk, b"confirm-" + mine.encode() + transcript)
            return psk, expected, my_confirm, keys if usable else None

        self._peer_hello = hello
        self.state = HandshakeState.AWAIT_CONFIRM
        if self.initiator:  # one key, chosen for this peer; CONFIRM at once
            self._candidates = [candidate(self._keys.for_peer(peer.name), True)]
            return [bytes([FrameType.CONFIRM]) + self._candidates[0][2]]
        # The responder proves a key only once the initiator has proved it.
        self._candidates = [candidate(k, True) for k in self._keys.accepted()]
        self._candidates += [candidate(k, False) for k in self._keys.refused()]
        return []

    # -- certificates ----------------------------------------------------------

    def _choose_method(self, peer: Identity) -> int:
        mine = self.identity.auth
        if not self._keys.accepted() and not self._keys.refused():
            mine &= ~AUTH_PASSWORD
        both = mine & peer.auth
        if both & AUTH_CERT:
            return AUTH_CERT
        if both & AUTH_PASSWORD:
            return AUTH_PASSWORD
        if mine & AUTH_CERT:
            raise self._reject(
                "this mesh admits only hosts with a certificate and the peer has none: give it "
                "one ('mesh ca sign', then 'mesh launch --cert F --key F --ca F')"
            )
        raise self._reject(
            "the peer admits only hosts with a certificate and this one has none: give it one "
            "('mesh ca sign', then 'mesh launch --cert F --key F --ca F')"
        )

    def _cert_confirm(self) -> bytes:
        assert self._cert_state is not None
        assert self.credentials is not None
        prk, transcript, _ = self._cert_state
        role = b"i" if self.initiator else b"r"
        cert = self.credentials.cert
        mac = kdf(prk, b"confirm-" + role + transcript + cert.fingerprint)
        sig = sign(self.credentials.seed, CERT_SIGNED + role + transcript)
        raw = cert.raw
        return bytes([FrameType.CONFIRM]) + mac + struct.pack("!H", len(raw)) + raw + sig

    def _receive_cert_confirm(self, body: bytes) -> tuple[list[bytes], HandshakeResult | None]:
        assert self._cert_state is not None
        assert self.credentials is not None
        prk, transcript, keys = self._cert_state
        if body[0] != FrameType.CONFIRM or len(body) < 1 + CONFIRM_BYTES + 2 + SIGNATURE_BYTES:
            raise BadPacket("expected a CONFIRM frame with a certificate")
        mac = body[1 : 1 + CONFIRM_BYTES]
        (clen,) = struct.unpack_from("!H", body, 1 + CONFIRM_BYTES)
        start = 1 + CONFIRM_BYTES + 2
        if len(body) != start + clen + SIGNATURE_BYTES:
            raise BadPacket("CONFIRM frame of the wrong length")
        cert = decode_cert_untrusted(body[start : start + clen])
        sig = body[start + clen :]
        peer = self._peer_hello
        assert peer is not None
        theirs = b"r" if self.initiator else b"i"
        try:
            self._check_peer_cert(cert, peer.identity, CERT_SIGNED + theirs + transcript, sig)
        except CertRefused as exc:
            if self.initiator:  # the responder is done: it reads no REJECT now
                exc.keys = keys
            raise
        if not constant_time_equal(
            mac, kdf(prk, b"confirm-" + theirs + transcript + cert.fingerprint)
        ):
            raise BadPacket("CONFIRM that does not match the handshake")
        self.state = HandshakeState.DONE
        out = [] if self.initiator else [self._cert_confirm()]
        return out, HandshakeResult(peer.identity, peer.recv_index, keys, cert=cert)

    def _check_peer_cert(
        self, cert: Certificate, peer: Identity, signed: bytes, sig: bytes
    ) -> None:
        assert self.credentials is not None
        self.credentials.trust.verify(cert, self.credentials.wall)
        if cert.name != peer.name or cert.nickname != peer.nickname:
            raise CertRefused(
                f"the peer calls itself {peer.nickname!r} ({format_name(peer.name)}) but its "
                f"certificate names {cert.describe()}"
            )
        if not signature_ok(cert.public_key, signed, sig):
            raise CertRefused(
                f"the peer presents the certificate of {cert.nickname!r} without its key "
                "(its handshake signature does not verify)"
            )
