"""What ``mesh status`` and ``mesh ps`` print: the words and tables a person reads.

The data comes as ``meshrouter.contract.status`` types; nothing here talks to the router.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from meshrouter.contract.status import ConnectionStatus, ConnState, RouterStatus

STATE_WORDS = {
    ConnState.HANDSHAKE: "handshake",
    ConnState.PENDING: "pending (no UDP both ways)",
    ConnState.ESTABLISHED: "established",
    ConnState.CLOSED: "closed",
}


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Aligned columns; the header in bold on a terminal, plain when piped."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    bold = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    for k, row in enumerate([header, *rows]):
        line = "  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)).rstrip()
        print(f"\033[1m{line}\033[0m" if bold and k == 0 else line)


def state_words(c: ConnectionStatus) -> str:
    try:
        return STATE_WORDS[ConnState(c["state"])]
    except ValueError:
        return c["state"]


def summary(st: RouterStatus) -> None:
    conns = st["connections"]
    est = sum(1 for c in conns if c["state"] == ConnState.ESTABLISHED)
    ciphers = sorted({c["cipher"] for c in conns if c.get("cipher")})
    reachable = sum(1 for p in st["peers"] if p["reachable"])
    print(f"        Version: {st['version']}")
    print(f"           Peer: {st['name']} ({st['nickname']})")
    print(f"     Encryption: enabled{' (' + ', '.join(ciphers) + ')' if ciphers else ''}")
    print(f"           Port: {st['port']} (TCP control, UDP data)")
    certs = st.get("certs")
    if certs:
        own = certs["cert"]
        also = "; the password is accepted too (moving to certificates)"
        print(
            f"       Identity: certificate {own['name']} ({own['fingerprint'][:16]}), "
            f"until {_day(own['expires'])}, {certs['revoked']} revoked in the mesh"
            f"{also if certs['password_accepted'] else ''}"
        )
    else:
        print("       Identity: the mesh password (no certificate)")
    plane = st.get("dataplane")
    if plane:
        print(f"     Data plane: {'C loop' if plane == 'c' else 'pure Python'}")
    print(f"         Bridge: {st['bridge']} (tap {st['tap']}), container MTU {st['mtu']}")
    six = st.get("ipalloc_range6")
    print(f"       IP range: {st['ipalloc_range']}{' and ' + str(six) if six else ''}")
    pw = st.get("password")
    if pw and pw["epoch"]:
        extra = (
            f", the previous one accepted for {pw['previous_accepted_for']:.0f}s more"
            if pw["previous_accepted_for"]
            else ""
        )
        print(f"       Password: rotated {pw['epoch']} time(s){extra}")
    nat = st.get("nat")
    if nat and nat["seen_udp"]:
        seen = "; ".join(f"{a} (by {', '.join(who)})" for a, who in nat["seen_udp"].items())
        kind = (
            "behind a NAT that maps per destination (symmetric)"
            if nat["symmetric"]
            else "behind a NAT"
            if nat["behind_nat"]
            else "no NAT seen"
        )
        print(f"      Seen from: {seen}: {kind}")
    if nat and nat.get("public"):
        print(f"      Public at: {', '.join(nat['public'])} (--nat-public: peers dial it)")
    for who, how in (nat or {}).get("punching", {}).items():
        print(f"    Through NAT: {who}: {how}")
    relay = st.get("relay", "yes")
    if relay != "yes":
        says = "never for others (--relay no)" if relay == "no" else "preferred (--relay prefer)"
        print(f"         Relays: {says}")
    print(f"    Connections: {len(conns)} ({est} established)")
    print(f"          Peers: {len(st['peers'])} known ({reachable} reachable, self included)")
    print(f"        Targets: {len(st['targets'])}")
    print(f"  MACs learned : {st['macs']}")
    dns = st["dns"]
    if dns["enabled"]:
        where = " and ".join(dns.get("addresses") or [dns["address"]])
        print(f"            DNS: {dns['domain']} on {where}, {len(dns['entries'])} names")
    else:
        print("            DNS: off")
    if st["expose"]["addresses"]:
        print(f"        Exposed: {', '.join(st['expose']['addresses'])}")
    if st["drops"]:
        print("   Dropped: " + ", ".join(f"{k}={v}" for k, v in sorted(st["drops"].items())))


def dns(st: RouterStatus) -> None:
    d = st["dns"]
    if not d["enabled"]:
        print("DNS is off (the router was launched with --no-dns)")
        return
    upstream = ", ".join(d["upstream"]) or "none"
    print(f"domain {d['domain']} on {d['address']}, TTL {d['ttl']}s, upstream {upstream}")
    table(
        ["NAME", "ADDRESS", "PEER", "CONTAINER"],
        [
            [e["name"], e["address"], e["peer"], e["container"].split("/", 1)[-1]]
            for e in d["entries"]
        ],
    )


def expose(st: RouterStatus) -> None:
    e = st["expose"]
    if not e["addresses"]:
        print("not exposed ('mesh expose' gives this host an address on the mesh)")
        return
    masq = "with" if e["masquerade"] else "without"
    print(f"exposed as {', '.join(e['addresses'])}, {masq} masquerading")


PATH_WORDS = {
    "kernel": "kernel VXLAN, not encrypted",
    "fallback": "router (kernel path failing)",
    "sleeve": "router",
}


def _day(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def _identity(c: ConnectionStatus) -> str:
    cert = c.get("cert")
    if cert:
        return f"cert {cert['fingerprint'][:16]} until {_day(cert['expires'])}"
    return "password" if c.get("peer") else "-"


def _through(c: ConnectionStatus) -> str:
    relay = c.get("relay")
    if not relay:
        return ""
    if c["state"] == "established":
        return f" (punched, dialled through {relay})"
    return f" (dialled through {relay}, not punched: relayed)"


def connections(st: RouterStatus) -> None:
    table(
        ["", "ADDRESS", "PEER", "NICKNAME", "STATE", "ENCRYPTION", "DATA PATH", "IDENTITY"],
        [
            [
                "->" if c["direction"] == "outbound" else "<-",
                # A tunnel: its control stream rides a relay, its UDP is punched.
                c["address"] + _through(c),
                c.get("peer") or "-",
                c.get("nickname") or "-",
                state_words(c),
                c.get("cipher", "-") if c["encrypted"] else "not encrypted",
                PATH_WORDS.get(c.get("path", ""), "router") if c.get("peer") else "-",
                _identity(c),
            ]
            for c in st["connections"]
        ],
    )


def peers(st: RouterStatus) -> None:
    rows = []
    for p in st["peers"]:
        links = ", ".join(
            ("->" if c["outbound"] else "<-") + c["peer"] + ("" if c["established"] else "?")
            for c in p["connections"]
            if c["address"] or c["peer"] != p["peer"]  # not its relay role's entry
        )
        if p["peer"] == st["name"]:
            reach = "self"
        elif p["via"]:
            sealed = {"end to end": ", sealed end to end", "by each hop": ", re-sealed"}
            reach = "via " + p["via"] + sealed.get(p.get("sealed", ""), "")
        else:
            reach = "direct" if p["reachable"] else "unreachable"
        relays = {"no": "never", "prefer": "preferred"}.get(p.get("relay", "yes"), "yes")
        rows.append([p["peer"], p["nickname"], reach, relays, links or "-"])
    table(["PEER", "NICKNAME", "ROUTE", "RELAYS", "CONNECTIONS"], rows)


def targets(st: RouterStatus) -> None:
    table(
        ["TARGET", "STATE", "PEER", "TRIES", "LAST ERROR", "NEXT TRY"],
        [
            [
                t["address"] + (" (discovered)" if t.get("discovered") else ""),
                t["state"],
                t["peer"] or "-",
                str(t["attempts"]),
                t["last_error"] or "-",
                f"{t['next_try_in']}s" if t["next_try_in"] is not None else "-",
            ]
            for t in st["targets"]
        ],
    )


def ipam(st: RouterStatus) -> None:
    ip = st["ipam"]
    agreed = (
        "ring agreed"
        if ip["ready"]
        else (f"waiting for {ip['quorum']} of {ip['init_count']} initial peers")
    )
    after = ip.get("reclaim_after", 0)
    takeover = f"taken over after {after:.0f}s unreachable" if after else "kept until rmpeer"
    print(f"range {ip['range']}: {agreed}; shares of dead peers {takeover}")
    table(
        ["PEER", "NICKNAME", "OWNED", "USED", "FREE", "UNREACHABLE"],
        [
            [
                s["peer"],
                s["nickname"],
                str(s["owned"]),
                "-" if s["used"] is None else str(s["used"]),
                "-" if s["free"] is None else str(s["free"]),
                "-" if s.get("unreachable_for") is None else f"{s.get('unreachable_for')}s",
            ]
            for s in ip["shares"]
        ],
    )
    for al in ip["allocations"]:
        print(f"  {al['address']:15s} {al['container'].split('/', 1)[-1]}")


def status(st: RouterStatus, what: str) -> None:
    """``mesh status [WHAT]``: all (summary, connections, peers, targets) or one part."""
    if what in ("ipam", "dns", "expose"):
        {"ipam": ipam, "dns": dns, "expose": expose}[what](st)
        return
    parts = {"connections": connections, "peers": peers, "targets": targets}
    if what == "all":
        summary(st)
        for show in parts.values():
            print()
            show(st)
    else:
        parts[what](st)
