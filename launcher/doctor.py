"""``mesh doctor``: what is wrong with this host and its peers, and what to do.

``diagnose`` turns the router's status and a few facts of the host into
findings, one line each (no I/O: unit-tested); ``gather`` reads the facts.
Exit status: 0 when nothing failed (warnings allowed), 1 otherwise.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from meshrouter.base.constants import ETH_HEADER, PORT
from meshrouter.contract.status import ConnState, RouterStatus

CERT_WARN_DAYS = 14  # a certificate expiring sooner is worth a warning
SKEW_LIMIT = 1.0  # seconds of clock difference worth a warning
TUNNEL_OVERHEAD = 74  # what a lone frame needs in a datagram beyond itself (constants.py)
OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Finding:
    level: str
    what: str
    todo: str = ""

    def line(self) -> str:
        return f"{self.level:<4}  {self.what}" + (f": {self.todo}" if self.todo else "")


@dataclass(frozen=True)
class HostFacts:
    bridge_up: bool | None  # None: no such interface
    tap_on_bridge: bool
    tun_device: bool
    nft: bool
    ip_forward: bool


def _flags_up(dev: str) -> bool | None:
    try:
        return bool(int(Path(f"/sys/class/net/{dev}/flags").read_text(), 16) & 1)
    except (OSError, ValueError):
        return None


def gather(st: RouterStatus) -> HostFacts:
    tap = st["tap"] or ""
    master = Path(f"/sys/class/net/{tap}/master")
    try:
        on_bridge = bool(tap) and os.path.basename(os.readlink(master)) == st["bridge"]
    except OSError:
        on_bridge = False
    try:
        forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    except OSError:
        forward = False
    return HostFacts(
        bridge_up=_flags_up(st["bridge"]),
        tap_on_bridge=on_bridge,
        tun_device=os.path.exists("/dev/net/tun"),
        nft=shutil.which("nft") is not None,
        ip_forward=forward,
    )


def diagnose(st: RouterStatus, facts: HostFacts) -> list[Finding]:
    out: list[Finding] = [Finding(OK, f"router {st['name']} ({st['nickname']}) {st['version']}")]
    out += _host(st, facts)
    out += _addresses(st, facts)
    for t in st["targets"]:
        if t["state"] == "connected":
            continue
        err = t["last_error"] or "not connected yet"
        if "certificate" in err or "CA" in err:
            out.append(
                Finding(
                    FAIL,
                    f"{t['address']} and this host do not accept each other ({err})",
                    "give each host a current certificate of the mesh CA ('mesh ca sign')",
                )
            )
        elif "password" in err or "authentic" in err:
            out.append(
                Finding(
                    FAIL,
                    f"{t['address']} refuses our password ({err})",
                    "give both hosts the same --password-file",
                )
            )
        elif t.get("discovered"):
            # An address a peer's record gives (another site's private one,
            # behind a NAT): the peer may well be reached otherwise.
            if t["state"] != "connecting":
                out.append(
                    Finding(
                        WARN,
                        f"{t['address']}, an address a peer's gossip gives, does not answer "
                        f"({err})",
                        "nothing to do if the peer is reached otherwise (behind a NAT, "
                        "another site's private address); else open TCP port 6783 to it",
                    )
                )
        else:
            out.append(
                Finding(
                    FAIL,
                    f"cannot connect to {t['address']} ({err})",
                    "check that its router runs and that TCP port 6783 is open to it",
                )
            )
    out += _connections(st)
    out += _certificates(st)
    nat = st.get("nat")
    port = st.get("port", PORT)
    forward = (
        f"forward TCP and UDP port {port} on the NAT to this host and launch it "
        f"with --nat-public ADDR:{port}, ADDR the NAT's public address"
    )
    if nat and nat["symmetric"] and not nat.get("public"):
        seen = ", ".join(f"{a} by {'/'.join(w)}" for a, w in nat["seen_udp"].items())
        out.append(
            Finding(
                WARN,
                f"this host is behind a NAT that maps UDP per destination (peers see {seen})",
                "no direct path can be punched through it: its peers' traffic takes a relay; "
                f"for direct paths, {forward}",
            )
        )
    for who, how in (nat or {}).get("punching", {}).items():
        if how.startswith("relayed"):
            out.append(
                Finding(
                    WARN,
                    f"no direct path to {who} through the NATs: its traffic is relayed",
                    "one of the two NATs maps UDP per destination, or blocks it; for a "
                    f"direct path, on one of the two hosts {forward}",
                )
            )
    ipam = st["ipam"]
    away = {
        s["peer"]: s.get("unreachable_for")
        for s in ipam.get("shares", [])
        if s.get("unreachable_for") is not None
    }
    after = ipam.get("reclaim_after", 0)
    certs = st.get("certs")
    evicted = set(certs.get("evicted", [])) if certs else set()
    for p in st["peers"]:
        if p["peer"] in evicted:
            out.append(Finding(OK, f"peer {p['nickname']} ({p['peer']}) is revoked: evicted"))
        elif not p["reachable"]:
            gone = away.get(p["peer"])
            when = (
                f"its address share is taken over in {max(0.0, after - gone):.0f}s unless it "
                "returns; "
                if after and gone is not None
                else ""
            )
            out.append(
                Finding(
                    WARN,
                    f"peer {p['nickname']} ({p['peer']}) is unreachable",
                    f"{when}if it is gone for good: mesh rmpeer {p['nickname']}",
                )
            )
    failures = st["counters"].get("handshake_failures", 0)
    if failures:
        out.append(
            Finding(
                WARN,
                f"{failures} handshake(s) failed",
                "a host refused for its certificate (revoked, another CA, expired), "
                "or garbage on port 6783: see router.log"
                if certs
                else "a peer with another password, or garbage on port 6783: see router.log",
            )
        )
    auth = st["drops"].get("auth_failed", 0)
    if auth:
        out.append(Finding(WARN, f"{auth} datagram(s) failed authentication", "see router.log"))
    return out


def _host(st: RouterStatus, facts: HostFacts) -> list[Finding]:
    out = []
    if facts.bridge_up is None:
        out.append(Finding(FAIL, f"bridge {st['bridge']} is missing", "mesh stop; mesh launch"))
    elif not facts.bridge_up:
        out.append(
            Finding(FAIL, f"bridge {st['bridge']} is down", f"ip link set dev {st['bridge']} up")
        )
    if not facts.tap_on_bridge:
        out.append(
            Finding(
                FAIL,
                f"TAP {st['tap']} is not on bridge {st['bridge']}",
                f"ip link set dev {st['tap']} master {st['bridge']}",
            )
        )
    if not facts.tun_device:
        out.append(
            Finding(
                FAIL, "/dev/net/tun is missing", "modprobe tun (or mount it into the container)"
            )
        )
    off = st["offload"]
    missing = [k for k in ("tap", "udp_gso", "udp_gro") if not off[k]]
    if missing:
        out.append(
            Finding(
                WARN,
                f"kernel offloads off: {', '.join(missing)}",
                "throughput is lower (a kernel >= 5.0, or --no-offload was given)",
            )
        )
    if st.get("dataplane") == "python" and not st.get("dataplane_built", True):
        out.append(
            Finding(
                WARN,
                "the C data plane is not built: the pure-Python loop forwards",
                "throughput is lower; install gcc and the Python headers and reinstall meshrouter",
            )
        )
    if not facts.nft:
        out.append(
            Finding(
                WARN,
                "nft is not installed",
                "apt-get install nftables: DNS isolation, anti-spoofing and expose need it",
            )
        )
    if len(out) == 0:
        out.append(
            Finding(OK, f"bridge {st['bridge']} up with TAP {st['tap']}; /dev/net/tun; nftables")
        )
    return out


def _addresses(st: RouterStatus, facts: HostFacts) -> list[Finding]:
    out = []
    ipam = st["ipam"]
    reachable = sum(1 for p in st["peers"] if p["reachable"])
    if not ipam["ready"] and reachable >= ipam["quorum"]:
        out.append(Finding(WARN, "the mesh is agreeing on address ownership (a few seconds)"))
    elif not ipam["ready"]:
        out.append(
            Finding(
                FAIL,
                "the mesh has not agreed on address ownership",
                f"connect {ipam['quorum']} of the {ipam['init_count']} initial peers "
                "(--ipalloc-init)",
            )
        )
    else:
        out.append(Finding(OK, f"addresses from {ipam['range']}"))
    dns = st["dns"]
    out.append(
        Finding(OK, f"DNS {dns['domain']} on {dns['address']}" if dns["enabled"] else "DNS off")
    )
    if st["expose"]["masquerade"] and not facts.ip_forward:
        out.append(
            Finding(
                FAIL,
                "exposed with masquerading, but IP forwarding is off",
                "sysctl -w net.ipv4.ip_forward=1 (or mesh expose again)",
            )
        )
    return out


def _certificates(st: RouterStatus) -> list[Finding]:
    """Certificates that expire soon; peers still on the password while the
    mesh moves to certificates."""
    certs = st.get("certs")
    if not certs:
        return []
    now = st["start_time"] + st["uptime"]
    out = []
    own = certs["cert"]
    mine = [("this host's certificate", own)]
    theirs = [
        (f"{c.get('nickname')}'s certificate", c["cert"])
        for c in st["connections"]
        if c.get("cert")
    ]
    for what, cert in mine + theirs:
        assert cert is not None
        left = cert["expires"] - now
        if left < CERT_WARN_DAYS * 86400:
            day = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(cert["expires"]))
            out.append(
                Finding(
                    WARN,
                    f"{what} ({cert['fingerprint'][:16]}) expires {day}, in {left / 86400:.1f} "
                    "days",
                    f"renew it: mesh ca sign CA_DIR {cert['name']}, then on that host "
                    "mesh cert renew --cert F --key F",
                )
            )
    on_password = [str(c.get("nickname")) for c in st["connections"] if c.get("auth") == "password"]
    if on_password:
        out.append(
            Finding(
                WARN,
                f"peers still on the password: {', '.join(sorted(on_password))}",
                "give each a certificate ('mesh ca sign', keeping its name with --peer-name), "
                "then launch every host without --password-file",
            )
        )
    elif certs["password_accepted"]:
        out.append(
            Finding(
                WARN,
                "every peer here is on its certificate, and this host still accepts the password",
                "launch it without --password-file to refuse it",
            )
        )
    else:
        out.append(Finding(OK, f"on certificates: {own['name']} ({own['fingerprint'][:16]})"))
    return out


def _connections(st: RouterStatus) -> list[Finding]:
    out = []
    for c in st["connections"]:
        who = c.get("nickname") or c["address"]
        if c["state"] == ConnState.HANDSHAKE:
            out.append(Finding(WARN, f"{c['address']}: handshake not finished"))
            continue
        if c["state"] == ConnState.PENDING and c.get("relay"):
            # Through a relay, behind NATs: what the NAT findings say of it.
            out.append(
                Finding(
                    OK,
                    f"{who}: through {c['relay']}, its traffic sealed end to end; no direct "
                    "UDP path punched (yet)",
                )
            )
            continue
        if c["state"] == ConnState.PENDING:
            out.append(
                Finding(
                    FAIL,
                    f"{who}: UDP does not flow both ways",
                    f"open UDP port 6783 between this host and {c.get('udp_address') or who}",
                )
            )
            continue
        if c.get("path") == "fallback":
            out.append(
                Finding(
                    WARN,
                    f"{who}: trusted, but the kernel path fails (the router carries it, "
                    "encrypted and slower)",
                    f"open UDP port 6784 between the hosts, with room for {st['mtu'] + 64}-byte "
                    "datagrams",
                )
            )
        size = c.get("datagram_size", 0)
        need = st["mtu"] + ETH_HEADER + TUNNEL_OVERHEAD
        family = "IPv6" if (c.get("udp_address") or "").startswith("[") else "IPv4"
        notes = [f"{c.get('cipher')}, over {family}, path MTU {size}"]
        if c.get("pmtu_confirmed") and size < need:
            out.append(
                Finding(
                    WARN,
                    f"{who}: path MTU {size} is below the {need} a frame needs",
                    f"frames are split in two; for speed, --mtu {st['mtu'] - (need - size)}",
                )
            )
        skew = c.get("clock_skew")
        if skew is not None and abs(skew) > SKEW_LIMIT:
            out.append(
                Finding(
                    WARN,
                    f"{who}: its clock is {skew:+.1f} s from ours",
                    "run NTP on both hosts (logs will not line up)",
                )
            )
        version = c.get("peer_version")
        if version and version != st["version"]:
            out.append(
                Finding(
                    WARN,
                    f"{who} runs meshrouter {version}, this host {st['version']}",
                    "upgrade one of them",
                )
            )
        out.append(Finding(OK, f"{who}: established ({', '.join(notes)})"))
    return out
