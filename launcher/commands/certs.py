"""mesh ca, revoke, cert: the mesh CA (kept by the operator, never on a
router), host certificates and revocations.

A CA directory holds ``ca.crt`` (give it to every host: ``--ca``), ``ca.key``
(mode 600: keep it off the routers), ``issued/`` (every certificate it
signed, so that ``mesh ca revoke DIR NAME`` finds them) and ``revoked.pem``
(every revocation it made, cumulative).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from launcher.common import _ask, add_command
from launcher.parser import CliError, Parser
from meshrouter.base.errors import BadInput, BadPacket
from meshrouter.base.names import format_name, parse_name
from meshrouter.contract import requests as rq
from meshrouter.contract.certfiles import read_certs, read_key, write_pem
from meshrouter.proto import cert as mc

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _duration(text: str, what: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "y": 365 * 86400}
    m = re.fullmatch(r"(\d+)([smhdy]?)", text.strip())
    if not m or int(m.group(1)) == 0:
        raise CliError(f"{what} {text!r}: give a duration like 90d, 12h or 2y")
    return int(m.group(1)) * units[m.group(2) or "s"]


def _ca(directory: str) -> tuple[Path, bytes, mc.Certificate]:
    d = Path(directory)
    try:
        seed = read_key(str(d / "ca.key"))
        (ca,) = read_certs(str(d / "ca.crt"), "CA certificate")
    except ValueError as exc:
        raise CliError(f"{exc} (is {d} a directory made by 'mesh ca init'?)") from None
    if mc.public_key_of(seed) != ca.public_key:
        raise CliError(f"{d}/ca.key is not the key of {d}/ca.crt")
    return d, seed, ca


def _write(path: Path, label: str, raw: list[bytes], mode: int = 0o644) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_pem(path, label, raw, mode)
    except OSError as exc:
        raise CliError(str(exc)) from None


def cmd_ca(a: argparse.Namespace) -> int:
    if a.action == "init":
        return _ca_init(a)
    if a.action == "show":
        return _show(str(Path(a.dir) / "ca.crt"))
    if not a.name:
        raise CliError(f"mesh ca {a.action} DIR NAME: which host?")
    return _ca_sign(a) if a.action == "sign" else _ca_revoke(a)


def _ca_init(a: argparse.Namespace) -> int:
    d = Path(a.dir)
    if (d / "ca.key").exists():
        raise CliError(f"{d}/ca.key exists: this directory has a CA already")
    seed = os.urandom(32)
    now = int(time.time())
    name = a.name or "mesh-ca"
    ca = mc.issue(
        seed,
        name=bytes(6),
        nickname=name,
        public_key=mc.public_key_of(seed),
        not_before=now - 60,
        not_after=now + _duration(a.expires or "10y", "--expires"),
        is_ca=True,
    )
    _write(d / "ca.key", mc.PEM_KEY, [seed], 0o600)
    _write(d / "ca.crt", mc.PEM_CERT, [ca.raw])
    print(f"CA {name!r} ({ca.short}) in {d}: give {d}/ca.crt to every host (--ca); keep")
    print(f"{d}/ca.key with you, off the routers")
    return 0


def _ca_sign(a: argparse.Namespace) -> int:
    d, ca_seed, ca = _ca(a.dir)
    if not NAME_RE.match(a.name):
        raise CliError(
            f"host name {a.name!r}: letters, digits, '.', '_' and '-', at most 63 characters"
        )
    try:
        peer = parse_name(a.peer_name) if a.peer_name else mc.peer_name_for(a.name)
    except (BadInput, ValueError) as exc:
        raise CliError(f"--peer-name {a.peer_name!r}: {exc}") from None
    ranges: list[str] = []
    for cidr in filter(None, (a.ips or "").split(",")):
        try:
            ranges.append(str(ipaddress.ip_network(cidr.strip(), strict=False)))
        except ValueError:
            raise CliError(f"--ips {cidr!r} is not a CIDR like 10.32.0.0/16") from None
    groups = [g.strip() for g in (a.groups or "").split(",") if g.strip()]
    now = int(time.time())
    seed = os.urandom(32)
    try:
        host = mc.issue(
            ca_seed,
            name=peer,
            nickname=a.name,
            public_key=mc.public_key_of(seed),
            not_before=now - 60,
            not_after=min(now + _duration(a.expires or "90d", "--expires"), ca.not_after),
            ranges=ranges,
            groups=groups,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    out = Path(a.out or d)
    _write(out / f"{a.name}.key", mc.PEM_KEY, [seed], 0o600)
    _write(out / f"{a.name}.crt", mc.PEM_CERT, [host.raw])
    _write(d / "issued" / f"{a.name}-{host.short}.crt", mc.PEM_CERT, [host.raw])
    print(
        f"{a.name} ({format_name(peer)}, {host.short}), valid until "
        f"{mc.format_time(host.not_after)}: {out}/{a.name}.crt and {out}/{a.name}.key"
    )
    print(f"on {a.name}: mesh launch --cert {a.name}.crt --key {a.name}.key --ca ca.crt ...")
    return 0


def _ca_revoke(a: argparse.Namespace) -> int:
    d, ca_seed, _ = _ca(a.dir)
    issued: list[mc.Certificate] = []
    for path in sorted((d / "issued").glob("*.crt")):
        try:
            issued += read_certs(str(path))
        except ValueError as exc:
            print(f"mesh: skipping {exc}", file=sys.stderr)
    who = a.name.lower()
    chosen = [c for c in issued if c.nickname == a.name or c.fingerprint.hex().startswith(who)]
    if not chosen or (len(who) < 8 and not any(c.nickname == a.name for c in chosen)):
        names = sorted({c.nickname for c in issued}) or ["none yet"]
        raise CliError(
            f"this CA issued no certificate for {a.name!r} (a host name, or 8+ hex digits "
            f"of a fingerprint); it issued: {', '.join(names)}"
        )
    rev = mc.revoke(ca_seed, chosen, int(time.time()))
    out = Path(a.out) if a.out else d / f"revoke-{a.name}.pem"
    _write(out, mc.PEM_REVOCATION, [rev.raw])
    everything = d / "revoked.pem"
    try:
        old = mc.dearmor(everything.read_text(), mc.PEM_REVOCATION) if everything.exists() else []
    except (OSError, BadPacket):
        old = []
    _write(everything, mc.PEM_REVOCATION, [*old, rev.raw])
    print(f"revoked {', '.join(f'{c.nickname} ({c.short})' for c in chosen)}: {out}")
    print(f"hand it to any one router: mesh revoke --file {out}")
    return 0


def _show(path: str) -> int:
    try:
        certs = read_certs(path)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    for c in certs:
        kind = "CA" if c.is_ca else "host"
        print(f"{kind} certificate {c.nickname!r}")
        if not c.is_ca:
            print(f"  peer name    {format_name(c.name)}")
        print(f"  fingerprint  {c.fingerprint.hex()}")
        print(f"  issuer       {c.issuer.hex()}")
        print(f"  valid        {mc.format_time(c.not_before)} to {mc.format_time(c.not_after)}")
        if c.ranges:
            print(f"  ranges       {', '.join(c.ranges)}")
        if c.groups:
            print(f"  groups       {', '.join(c.groups)}")
    return 0


def _text(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read the {what} {path}: {exc}") from None


def cmd_revoke(a: argparse.Namespace) -> int:
    print(_ask(a.state_dir, rq.Revoke(_text(a.file, "revocation file"))))
    return 0


def cmd_cert(a: argparse.Namespace) -> int:
    if a.action == "show":
        if not a.file:
            raise CliError("mesh cert show FILE: which certificate?")
        return _show(a.file)
    if not (a.cert and a.key):
        raise CliError("mesh cert renew --cert FILE --key FILE [--ca FILE]: the new files")
    ca = _text(a.ca, "CA file") if a.ca else ""
    print(_ask(a.state_dir, rq.CertRenew(_text(a.cert, "certificate"), _text(a.key, "key"), ca)))
    print(
        "a restart reads the files named at launch (--cert/--key): put the new ones there, "
        "or launch with these"
    )
    return 0


def register(
    sub: argparse._SubParsersAction[Parser],
    common: Parser,
    config_defaults: dict[str, Any] | None,
) -> None:
    sp = add_command(
        sub,
        common,
        "ca",
        description="The mesh CA, kept by the operator (never on a router). 'init DIR' makes "
        "it; 'sign DIR NAME' gives host NAME a certificate and key (NAME.crt, NAME.key) "
        "binding its name, its peer name (derived from NAME unless --peer-name), its key, "
        "--ips and --groups, for --expires; 'revoke DIR NAME|FINGERPRINT' writes a signed "
        "revocation of every certificate issued for NAME (or the one with that fingerprint) "
        "for 'mesh revoke --file'; 'show DIR' prints the CA certificate.",
    )
    sp.add_argument("action", choices=["init", "sign", "revoke", "show"])
    sp.add_argument("dir", metavar="DIR")
    sp.add_argument("name", nargs="?", metavar="NAME", help="the host (or CA for init)")
    sp.add_argument(
        "--expires", metavar="DURATION", help="validity: 90d, 12h, 2y (default: 90d; a CA 10y)"
    )
    sp.add_argument("--ips", metavar="CIDR,...", help="address ranges its containers may use")
    sp.add_argument("--groups", metavar="G,...", help="groups, for policy")
    sp.add_argument(
        "--peer-name",
        metavar="MAC",
        help="the peer name to bind (default: derived from NAME); give a password-era "
        "router's own ('mesh status') to move it to a certificate under the same name",
    )
    sp.add_argument("--out", metavar="PATH", help="where to write (default: DIR)")
    sp.set_defaults(func=cmd_ca)

    sp = add_command(
        sub,
        common,
        "revoke",
        description="Hand a revocation from 'mesh ca revoke' to this router: the mesh carries "
        "it to every router, which closes its connections to the revoked host within "
        "seconds, refuses it from then on (also after restarts), drops its DNS names and "
        "takes over its address share.",
    )
    sp.add_argument("--file", required=True, metavar="FILE")
    sp.set_defaults(func=cmd_revoke)

    sp = add_command(
        sub,
        common,
        "cert",
        description="'renew' gives the running router a new certificate (and key; and CA "
        "with --ca): the next handshakes use it, no connection is closed. On a router that "
        "runs on the password it installs its first one (with --ca): each connection to a "
        "peer with a certificate too is replaced by one made by certificate, make before "
        "break ('mesh password retire' ends the move). 'show FILE' prints a certificate.",
    )
    sp.add_argument("action", choices=["renew", "show"])
    sp.add_argument("file", nargs="?", metavar="FILE")
    sp.add_argument("--cert", metavar="FILE")
    sp.add_argument("--key", metavar="FILE")
    sp.add_argument("--ca", metavar="FILE")
    sp.set_defaults(func=cmd_cert)
