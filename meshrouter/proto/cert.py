"""Host certificates, the mesh CA and revocations (sans-IO).

A mesh run on certificates has no shared secret: each host holds its own
Ed25519 key and a certificate, signed by the mesh CA, that binds::

    the peer's name (6 bytes, aa:bb:..) and nickname (the host name),
    its long-term public key (Ed25519),
    optionally the address ranges its containers may use, and groups,
    a validity window (seconds since the epoch, UTC).

The CA's own certificate is the same format with the CA flag set, signed by
itself; a host trusts the CA certificates it is given (``--ca``).  A
certificate names its issuer by the CA key's fingerprint.

Wire format of a certificate (all integers big-endian)::

    "MRC1" flags(u8: 1 = CA) name(6) nick_len(u8) nick
    public_key(32) not_before(u64) not_after(u64) issuer(16)
    n_ranges(u8) n_ranges x [family(u8: 4|6) prefix(u8) address(4|16)]
    n_groups(u8) n_groups x [len(u8) ascii]
    signature(64)          Ed25519 by the issuer over everything before it

A revocation, signed by the CA, names certificates by fingerprint (and the
peer name each was issued to, so that routers that never saw the certificate
know whom to evict)::

    "MRR1" issuer(16) issued_at(u64) count(u8) count x [fingerprint(32) name(6)]
    signature(64)

Files are PEM-armoured (``armor``/``dearmor``).  Parsers raise only
``BadPacket``; ``verify`` raises ``CertRefused`` with a one-line reason.
Clocks come in as ``wall`` (seconds since the epoch).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import nacl.exceptions
import nacl.signing

from meshrouter.base.errors import BadPacket, HandshakeRefused
from meshrouter.base.names import format_name

CERT_MAGIC = b"MRC1"
REVOKE_MAGIC = b"MRR1"
FLAG_CA = 1
SIGNATURE_BYTES = 64
KEY_BYTES = 32
ISSUER_BYTES = 16
FINGERPRINT_BYTES = 32
CLOCK_SKEW = 300.0  # seconds a peer's clock may be off and its certificate still count
MAX_NICKNAME = 64
MAX_RANGES = 32
MAX_GROUPS = 32
MAX_GROUP = 64
MAX_REVOKED = 255
_HEAD = struct.Struct("!4sB6sB")
_MIDDLE = struct.Struct("!32sQQ16s")
_REV_HEAD = struct.Struct("!4s16sQB")
_REV_ENTRY = struct.Struct("!32s6s")

PEM_CERT = "MESH CERTIFICATE"
PEM_KEY = "MESH PRIVATE KEY"
PEM_REVOCATION = "MESH REVOCATION"


class CertRefused(HandshakeRefused):
    """A certificate that does not authenticate its holder; the reason is one
    line for both operators."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, tell_peer=True)
        # The session keys, when the refusing side holds them: an initiator
        # refusing the responder's certificate tells it in a sealed CLOSE (the
        # responder has finished its handshake and reads no REJECT then).
        self.keys: object | None = None


def key_id(public_key: bytes) -> bytes:
    """How a certificate names its issuer: 16 bytes of the CA key's hash."""
    return hashlib.blake2b(public_key, digest_size=ISSUER_BYTES, person=b"meshrouter-ca").digest()


def fingerprint(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=FINGERPRINT_BYTES, person=b"meshrouter-crt").digest()


def public_key_of(seed: bytes) -> bytes:
    return bytes(nacl.signing.SigningKey(seed).verify_key)


def sign(seed: bytes, message: bytes) -> bytes:
    """An Ed25519 signature by the key whose 32-byte seed is ``seed``."""
    return bytes(nacl.signing.SigningKey(seed).sign(message).signature)


def signature_ok(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Certificate:
    name: bytes  # 6 bytes
    nickname: str
    public_key: bytes  # Ed25519, 32 bytes
    not_before: int
    not_after: int
    issuer: bytes  # key_id of the CA's key
    ranges: tuple[str, ...] = ()  # CIDRs, normalised
    groups: tuple[str, ...] = ()
    is_ca: bool = False
    signature: bytes = b""
    raw: bytes = field(default=b"", compare=False, repr=False)

    @property
    def fingerprint(self) -> bytes:
        return fingerprint(self.raw or encode_cert(self))

    @property
    def short(self) -> str:
        """The fingerprint as operators see it: 16 hex digits."""
        return self.fingerprint.hex()[:16]

    def describe(self) -> str:
        return f"{self.nickname} ({format_name(self.name)}, {self.short})"


def _tbs(cert: Certificate) -> bytes:
    """The bytes the issuer signs."""
    nick = cert.nickname.encode()
    if len(cert.name) != 6 or len(nick) > MAX_NICKNAME or len(cert.public_key) != KEY_BYTES:
        raise ValueError("a certificate needs a 6-byte name, a nickname and a 32-byte key")
    if len(cert.issuer) != ISSUER_BYTES:
        raise ValueError("a certificate needs a 16-byte issuer")
    if len(cert.ranges) > MAX_RANGES or len(cert.groups) > MAX_GROUPS:
        raise ValueError(f"at most {MAX_RANGES} ranges and {MAX_GROUPS} groups")
    out = bytearray(_HEAD.pack(CERT_MAGIC, FLAG_CA if cert.is_ca else 0, cert.name, len(nick)))
    out += nick
    out += _MIDDLE.pack(cert.public_key, cert.not_before, cert.not_after, cert.issuer)
    out.append(len(cert.ranges))
    for cidr in cert.ranges:
        net = ipaddress.ip_network(cidr)
        out += bytes([net.version, net.prefixlen]) + net.network_address.packed
    out.append(len(cert.groups))
    for group in cert.groups:
        raw = group.encode("ascii")
        if not 0 < len(raw) <= MAX_GROUP:
            raise ValueError(f"a group name is 1 to {MAX_GROUP} ASCII characters")
        out += bytes([len(raw)]) + raw
    return bytes(out)


def encode_cert(cert: Certificate) -> bytes:
    if len(cert.signature) != SIGNATURE_BYTES:
        raise ValueError("the certificate is not signed")
    return _tbs(cert) + cert.signature


def issue(
    ca_seed: bytes,
    *,
    name: bytes,
    nickname: str,
    public_key: bytes,
    not_before: int,
    not_after: int,
    ranges: Sequence[str] = (),
    groups: Sequence[str] = (),
    is_ca: bool = False,
) -> Certificate:
    """A certificate signed by the CA key ``ca_seed``."""
    unsigned = Certificate(
        name=name,
        nickname=nickname,
        public_key=public_key,
        not_before=not_before,
        not_after=not_after,
        issuer=key_id(public_key_of(ca_seed)),
        ranges=tuple(str(ipaddress.ip_network(r, strict=False)) for r in ranges),
        groups=tuple(groups),
        is_ca=is_ca,
    )
    signed = replace(unsigned, signature=sign(ca_seed, _tbs(unsigned)))
    return replace(signed, raw=encode_cert(signed))


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        if len(chunk) != n:
            raise BadPacket(f"truncated {self.what}")
        self.pos += n
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def unpack(self, fmt: struct.Struct) -> tuple[object, ...]:
        return fmt.unpack(self.take(fmt.size))


def decode_cert_untrusted(data: bytes) -> Certificate:
    """Parse a certificate (its signature unchecked: ``verify``).  Raises only
    BadPacket."""
    r = _Reader(data, "certificate")
    magic, flags, name, nick_len = r.unpack(_HEAD)
    if magic != CERT_MAGIC:
        raise BadPacket("not a meshrouter certificate (bad magic)")
    assert isinstance(flags, int)
    assert isinstance(name, bytes)
    assert isinstance(nick_len, int)
    if flags & ~FLAG_CA or nick_len > MAX_NICKNAME:
        raise BadPacket("certificate with unknown flags or an overlong nickname")
    try:
        nickname = r.take(nick_len).decode()
    except UnicodeDecodeError as exc:
        raise BadPacket("certificate nickname is not UTF-8") from exc
    public_key, not_before, not_after, issuer = r.unpack(_MIDDLE)
    assert isinstance(public_key, bytes)
    assert isinstance(issuer, bytes)
    assert isinstance(not_before, int)
    assert isinstance(not_after, int)
    ranges = []
    n_ranges = r.byte()
    if n_ranges > MAX_RANGES:
        raise BadPacket("certificate with too many ranges")
    for _ in range(n_ranges):
        family, prefix = r.byte(), r.byte()
        if family not in (4, 6):
            raise BadPacket("certificate range of an unknown family")
        addr = r.take(4 if family == 4 else 16)
        try:
            net = ipaddress.ip_network((addr, prefix))
        except ValueError as exc:
            raise BadPacket(f"bad certificate range: {exc}") from exc
        ranges.append(str(net))
    groups = []
    n_groups = r.byte()
    if n_groups > MAX_GROUPS:
        raise BadPacket("certificate with too many groups")
    for _ in range(n_groups):
        glen = r.byte()
        raw = r.take(glen)
        if not 0 < glen <= MAX_GROUP or not raw.isascii():
            raise BadPacket("bad certificate group name")
        groups.append(raw.decode("ascii"))
    signature = r.take(SIGNATURE_BYTES)
    if r.pos != len(data):
        raise BadPacket("certificate with trailing bytes")
    if not_after < not_before:
        raise BadPacket("certificate that ends before it starts")
    return Certificate(
        name=name,
        nickname=nickname,
        public_key=public_key,
        not_before=not_before,
        not_after=not_after,
        issuer=issuer,
        ranges=tuple(ranges),
        groups=tuple(groups),
        is_ca=bool(flags & FLAG_CA),
        signature=signature,
        raw=bytes(data),
    )


def _when(t: float) -> str:
    # Sans-IO: no time module.  Days since the epoch are enough for a reason.
    days, rest = divmod(int(t), 86400)
    y, m, d = _civil(days)
    return f"{y:04d}-{m:02d}-{d:02d} {rest // 3600:02d}:{rest // 60 % 60:02d} UTC"


def _civil(days: int) -> tuple[int, int, int]:
    """Howard Hinnant's days-to-civil-date."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return y + (m <= 2), m, d


def format_time(t: float) -> str:
    return _when(t)


@dataclass
class Trust:
    """What a router trusts: the CA certificates, and the revocations it holds."""

    cas: dict[bytes, Certificate]  # by key_id
    revoked: dict[bytes, bytes] = field(default_factory=dict)  # fingerprint -> peer name
    skew: float = CLOCK_SKEW

    @classmethod
    def of(cls, cas: Iterable[Certificate]) -> Trust:
        return cls({key_id(c.public_key): c for c in cas})

    def verify(self, cert: Certificate, wall: float) -> None:
        """Raise CertRefused unless ``cert`` is a host certificate one of our
        CAs signed, valid at ``wall`` (give or take ``skew``), not revoked."""
        who = f"certificate {cert.nickname!r}"
        if cert.is_ca:
            raise CertRefused(f"{who} is a CA certificate, not a host's")
        ca = self.cas.get(cert.issuer)
        if ca is None:
            raise CertRefused(
                f"{who} was signed by another CA (issuer {cert.issuer.hex()[:16]}); this mesh "
                f"trusts {', '.join(k.hex()[:16] for k in self.cas) or 'none'}"
            )
        if not signature_ok(ca.public_key, _tbs(cert), cert.signature):
            raise CertRefused(f"{who} does not carry a valid signature of the mesh CA (forged?)")
        if wall + self.skew < cert.not_before:
            raise CertRefused(
                f"{who} is not valid yet (from {_when(cert.not_before)}; clocks more than "
                f"{self.skew:.0f}s apart?)"
            )
        if wall - self.skew > cert.not_after:
            raise CertRefused(
                f"{who} expired at {_when(cert.not_after)}: renew it ('mesh ca sign', "
                "then 'mesh cert renew')"
            )
        if ca.not_after and wall - self.skew > ca.not_after:
            raise CertRefused(f"the mesh CA that signed {who} expired at {_when(ca.not_after)}")
        if cert.fingerprint in self.revoked:
            raise CertRefused(f"{who} ({cert.short}) was revoked by the mesh CA")

    def add_revocation(self, rev: Revocation) -> list[tuple[bytes, bytes]]:
        """Take in a revocation (``check_revocation`` first).  Returns the
        (fingerprint, peer name) pairs that are new."""
        new = [(fp, name) for fp, name in rev.entries if fp not in self.revoked]
        for fp, name in new:
            self.revoked[fp] = name
        return new

    def check_revocation(self, rev: Revocation) -> None:
        """Raise BadPacket unless one of our CAs signed ``rev``."""
        ca = self.cas.get(rev.issuer)
        if ca is None:
            raise BadPacket("revocation from a CA this mesh does not trust")
        if not signature_ok(ca.public_key, rev.raw[:-SIGNATURE_BYTES], rev.signature):
            raise BadPacket("revocation with a bad signature")


@dataclass(frozen=True, slots=True)
class Revocation:
    issuer: bytes
    issued_at: int
    entries: tuple[tuple[bytes, bytes], ...]  # (fingerprint, peer name)
    signature: bytes
    raw: bytes

    @property
    def names(self) -> list[bytes]:
        return [name for _, name in self.entries]


def revoke(ca_seed: bytes, certs: Sequence[Certificate], issued_at: int) -> Revocation:
    if not 0 < len(certs) <= MAX_REVOKED:
        raise ValueError(f"a revocation names 1 to {MAX_REVOKED} certificates")
    issuer = key_id(public_key_of(ca_seed))
    body = _REV_HEAD.pack(REVOKE_MAGIC, issuer, issued_at, len(certs))
    body += b"".join(_REV_ENTRY.pack(c.fingerprint, c.name) for c in certs)
    sig = sign(ca_seed, body)
    return decode_revocation_untrusted(body + sig)


def decode_revocation_untrusted(data: bytes) -> Revocation:
    """Parse a revocation (its signature unchecked: ``Trust.check_revocation``).
    Raises only BadPacket."""
    r = _Reader(data, "revocation")
    magic, issuer, issued_at, count = r.unpack(_REV_HEAD)
    if magic != REVOKE_MAGIC:
        raise BadPacket("not a meshrouter revocation (bad magic)")
    assert isinstance(issuer, bytes)
    assert isinstance(issued_at, int)
    assert isinstance(count, int)
    if count == 0:
        raise BadPacket("revocation naming no certificate")
    entries = []
    for _ in range(count):
        fp, name = r.unpack(_REV_ENTRY)
        assert isinstance(fp, bytes)
        assert isinstance(name, bytes)
        entries.append((fp, name))
    signature = r.take(SIGNATURE_BYTES)
    if r.pos != len(data):
        raise BadPacket("revocation with trailing bytes")
    return Revocation(issuer, issued_at, tuple(entries), signature, bytes(data))


# -- files -----------------------------------------------------------------------


def armor(label: str, raw: bytes) -> str:
    body = base64.b64encode(raw).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def dearmor(text: str, label: str) -> list[bytes]:
    """Every ``label`` block in ``text``.  Raises BadPacket when there is none
    or one is not base64."""
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    out: list[bytes] = []
    pos = 0
    while (start := text.find(begin, pos)) >= 0:
        stop = text.find(end, start)
        if stop < 0:
            raise BadPacket(f"a {label} block without its END line")
        try:
            out.append(
                base64.b64decode("".join(text[start + len(begin) : stop].split()), validate=True)
            )
        except ValueError as exc:
            raise BadPacket(f"a {label} block that is not base64") from exc
        pos = stop + len(end)
    if not out:
        raise BadPacket(f"no {label} in it")
    return out


def peer_name_for(nickname: str) -> bytes:
    """The peer name a certificate gives a host when the operator names none:
    derived from its host name, locally administered and unicast like a MAC."""
    digest = hashlib.blake2b(nickname.encode(), digest_size=6, person=b"meshrouter-nam").digest()
    return bytes([(digest[0] | 0x02) & 0xFE]) + digest[1:]
