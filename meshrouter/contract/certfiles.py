"""Certificate, key, CA and revocation files: read with a one-line reason for
whatever is wrong with them (``ValueError``), written atomically.

The formats are ``meshrouter.proto.cert``'s, PEM-armoured.  This module is
shared by ``mesh`` (launch preflight, ``mesh ca``) and the router.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from meshrouter.base.errors import BadPacket
from meshrouter.contract.state import atomic_write
from meshrouter.proto import cert as mc


@dataclass(frozen=True)
class HostCredentials:
    cert: mc.Certificate
    seed: bytes
    cas: tuple[mc.Certificate, ...]
    paths: tuple[str, str, str]  # cert, key, CA: what to read again on a renewal


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a text file"
        raise ValueError(f"cannot read the {what} {path}: {reason}") from None


def read_certs(path: str, what: str = "certificate file") -> list[mc.Certificate]:
    text = _read(path, what)
    try:
        return [mc.decode_cert_untrusted(raw) for raw in mc.dearmor(text, mc.PEM_CERT)]
    except BadPacket as exc:
        raise ValueError(f"the {what} {path} is not a mesh certificate: {exc}") from None


def read_key(path: str) -> bytes:
    text = _read(path, "key file")
    try:
        st = os.stat(path)
        (seed,) = mc.dearmor(text, mc.PEM_KEY)
    except (BadPacket, ValueError) as exc:
        raise ValueError(f"the key file {path} is not a mesh private key: {exc}") from None
    if len(seed) != mc.KEY_BYTES:
        raise ValueError(f"the key file {path} is not a mesh private key (wrong length)")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"the key file {path} is readable by others: chmod 600 {path}")
    return seed


def read_revocations(path: str) -> list[mc.Revocation]:
    text = _read(path, "revocation file")
    try:
        blocks = mc.dearmor(text, mc.PEM_REVOCATION)
        return [mc.decode_revocation_untrusted(raw) for raw in blocks]
    except BadPacket as exc:
        raise ValueError(f"the revocation file {path} is not a mesh revocation: {exc}") from None


def load_host(cert_path: str, key_path: str, ca_path: str, wall: float) -> HostCredentials:
    """A host's certificate, key and CA, checked against each other and the
    clock.  Raises ValueError with the first thing that is wrong."""
    certs = read_certs(cert_path)
    if len(certs) != 1 or certs[0].is_ca:
        raise ValueError(f"{cert_path} must hold one host certificate ('mesh ca sign' makes it)")
    seed = read_key(key_path)
    cas = read_certs(ca_path, "CA file")
    if not all(c.is_ca for c in cas):
        raise ValueError(f"{ca_path} holds a host certificate: give the CA's ca.crt")
    host = certs[0]
    if mc.public_key_of(seed) != host.public_key:
        raise ValueError(f"the key {key_path} is not the key of the certificate {cert_path}")
    try:
        mc.Trust.of(cas).verify(host, wall)
    except mc.CertRefused as exc:
        raise ValueError(f"{cert_path}: {exc.reason}") from None
    return HostCredentials(host, seed, tuple(cas), (cert_path, key_path, ca_path))


def write_pem(path: Path, label: str, blocks: list[bytes], mode: int = 0o644) -> None:
    atomic_write(path, "".join(mc.armor(label, b) for b in blocks).encode(), mode)


def launch_credentials(
    cert: str | None, key: str | None, ca: str | None, nickname: str | None, wall: float
) -> HostCredentials | None:
    """``--cert``/``--key``/``--ca`` of a launch, checked; None when none is given."""
    if not (cert or key or ca):
        return None
    if not (cert and key and ca):
        raise ValueError("a certificate needs all three: --cert FILE --key FILE --ca FILE")
    creds = load_host(cert, key, ca, wall)
    if nickname and nickname != creds.cert.nickname:
        raise ValueError(
            f"--nickname {nickname} but the certificate is for {creds.cert.nickname!r}: "
            "a host is the name its certificate names (leave --nickname out)"
        )
    return creds
