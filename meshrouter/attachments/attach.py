"""``mesh attach`` / ``mesh detach`` / ``mesh ps``: veth pairs between containers and the bridge.

Attachments are recorded in ``attachments.json`` in the state directory
(atomic writes, under an flock so concurrent attaches do not lose each other).
Any step that fails undoes what was made before it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

from meshrouter.attachments.interrupts import Interrupted, Interrupts
from meshrouter.base import v6map
from meshrouter.base.constants import CONTAINER_GSO_MAX_SIZE
from meshrouter.contract import apiclient
from meshrouter.contract import requests as rq
from meshrouter.contract.state import atomic_write, load_json
from meshrouter.engines import probe
from meshrouter.engines.containers import Container, ContainerError, find_container, resolve
from meshrouter.host import guard
from meshrouter.host.garp import send_garp
from meshrouter.host.netdev import NetdevError, ip, link_exists, make_veth
from meshrouter.host.netns import has_link, ip_batch, ipv6_link_settings

CONTAINER_IFACE = "ethwe"

R = TypeVar("R")


PENDING = "attaching"


class AttachError(Exception):
    """A one-line reason for the operator; nothing was left half-made."""


class AttachInterrupted(AttachError):
    """A signal stopped the attach before anything was made; what it had
    asked the router for was given back."""


@contextlib.contextmanager
def before_anything(interrupts: Interrupts | None) -> Iterator[None]:
    """A step of an attach before anything is made or asked for: a signal
    here ends it at once with AttachInterrupted (without ``interrupts``,
    signals behave as usual)."""
    try:
        with interrupts.abortable() if interrupts is not None else contextlib.nullcontext():
            yield
    except Interrupted:
        raise AttachInterrupted("interrupted: nothing was attached") from None


class IpamRefused(Exception):
    """The router's IPAM said no (taken, no space, not ready): its reason."""


@dataclass
class Attachment:
    container: str
    kind: str
    ident: str
    ns_path: str
    host_veth: str
    cidrs: list[str]  # its IPv4 addresses on the mesh, the first one first
    mac: str
    hostname: str = ""  # the DNS name registered for it ("" when none)
    resolv_conf: str = ""  # a resolv.conf attach wrote (removed on detach)
    ifname: str = CONTAINER_IFACE  # the interface inside the container
    guard: bool = True  # anti-spoofing rules for its port (guard.py)
    # "" attached; PENDING while its veth is made: a record left so (the
    # attach was killed) is undone by the next attach of it or 'mesh prune'
    state: str = ""
    # its IPv6 addresses: the images of its IPv4 ones in --ipalloc-range6,
    # and any the operator gave (not IPAM's: nothing mesh-wide stops a twin)
    cidrs6: list[str] = field(default_factory=list)

    @property
    def addresses(self) -> list[str]:
        """Every address, IPv4 first."""
        return [*self.cidrs, *self.cidrs6]

    @property
    def cidr(self) -> str:
        """Its first address ("" when none)."""
        return self.cidrs[0] if self.cidrs else ""


@dataclass(frozen=True)
class Want:
    """One address asked for: ``cidr`` as given, else one IPAM allocates in
    ``subnet`` (None: anywhere in the range)."""

    cidr: str | None = None
    subnet: str | None = None


def parse_cidr6(text: str) -> ipaddress.IPv6Interface:
    """Check an operator-given IPv6 address.  Raises AttachError."""
    try:
        return v6map.parse_address6(text)
    except v6map.Range6Error as exc:
        raise AttachError(str(exc)) from None


def is_ipv6(text: str) -> bool:
    return ":" in text


def parse_cidr(
    text: str, mesh_range: str, *, allow_outside: bool = False
) -> ipaddress.IPv4Interface:
    """Check an operator-given address.  One outside the mesh range is refused
    unless ``allow_outside`` (then IPAM does not allocate it).  Raises AttachError."""
    net = ipaddress.ip_network(mesh_range)
    try:
        iface = ipaddress.ip_interface(text if "/" in text else f"{text}/{net.prefixlen}")
    except ValueError:
        raise AttachError(
            f"invalid address {text!r}: expected an IPv4 address with prefix, like 10.32.0.5/12"
        ) from None
    if not isinstance(iface, ipaddress.IPv4Interface):
        raise AttachError(f"{text}: only IPv4 addresses are supported")
    if iface.ip not in net and not allow_outside:
        raise AttachError(
            f"{iface.ip} is outside the mesh range {net}: pick an address inside it "
            "(the range is set by 'mesh launch --ipalloc-range')"
        )
    if iface.network.num_addresses > 2 and iface.ip in (
        iface.network.network_address,
        iface.network.broadcast_address,
    ):
        raise AttachError(f"{iface} is the network or broadcast address of {iface.network}")
    return iface


def host_routes_overlapping(net: ipaddress.IPv4Network) -> list[str]:
    """This host's routes (not the default) whose destination overlaps ``net``."""
    out = ip("-4", "route", "show", check=False).stdout
    hits = []
    for line in out.splitlines():
        dst = line.split()[0] if line.strip() else "default"
        if dst == "default":
            continue
        try:
            if ipaddress.IPv4Network(dst, strict=False).overlaps(net):
                hits.append(line.strip())
        except ValueError:
            continue
    return hits


def veth_name(ident: str) -> str:
    return "vethwl" + hashlib.sha256(ident.encode()).hexdigest()[:8]


def in_ns(
    c: Container | Attachment, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["nsenter", f"--net={c.ns_path}", *args], capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise NetdevError(
            f"'{' '.join(args)}' in {getattr(c, 'name', '')} failed: {proc.stderr.strip()}"
        )
    return proc


_FIELDS = tuple(f.name for f in fields(Attachment))


def _guarded(records: dict[str, Attachment]) -> list[tuple[object, ...]]:
    """What of the records the anti-spoofing table is made of."""
    return sorted(
        (r.host_veth, r.mac, tuple(r.cidrs), tuple(r.cidrs6), r.guard)
        for r in records.values()
        if r.state != PENDING
    )


class Registry:
    """The attachment records of this host."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "attachments.json"
        self.lock_path = state_dir / "attachments.lock"
        self._guarded: list[tuple[object, ...]] | None = None  # what the table was made of

    @contextlib.contextmanager
    def locked(
        self, waiting: contextlib.AbstractContextManager[None] | None = None
    ) -> Iterator[dict[str, Attachment]]:
        """Read-modify-write under an exclusive lock; written back on success.
        ``waiting`` wraps the wait for the lock (an abortable region)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            with waiting or contextlib.nullcontext():
                fcntl.flock(lock, fcntl.LOCK_EX)
            records = self.read()
            self._guarded = _guarded(records)
            before = self._dump(records)
            yield records
            after = self._dump(records)
            if after != before:
                self.save(records, after)

    @staticmethod
    def _dump(records: dict[str, Attachment]) -> str:
        out = {}
        for k, v in records.items():
            doc = {name: getattr(v, name) for name in _FIELDS}  # not asdict: 10x faster
            if not doc["cidrs6"]:  # what 0.2 and older can read back (a downgrade)
                del doc["cidrs6"]
            out[k] = doc
        return json.dumps(out, sort_keys=True)

    def save(self, records: dict[str, Attachment], dumped: str | None = None) -> None:
        """Write the records now (under ``locked``: a step that must be on
        disk before the next one is made); the anti-spoofing table follows
        when what it is made of changed."""
        atomic_write(self.path, (dumped or self._dump(records)).encode())
        guarded = _guarded(records)
        if guarded != self._guarded:
            self.apply_guard(records)
            self._guarded = guarded

    @staticmethod
    def apply_guard(records: dict[str, Attachment]) -> None:
        """The anti-spoofing table, true to the records (a warning if nft fails)."""
        try:
            guard.apply(r for r in records.values() if r.state != PENDING)
        except NetdevError as exc:
            print(f"mesh: warning: anti-spoofing rules not applied: {exc}", file=sys.stderr)

    def read(self) -> dict[str, Attachment]:
        data: Any = load_json(self.path, {})
        out: dict[str, Attachment] = {}
        if isinstance(data, dict):
            for k, v in data.items():
                if isinstance(v, dict) and "cidr" in v:  # written by 0.1: one address
                    v = dict(v)
                    one = v.pop("cidr")
                    v["cidrs"] = [one] if one else []
                with contextlib.suppress(TypeError):
                    out[k] = Attachment(**v)
        return out


class AddressSource(Protocol):
    """Where addresses come from: the router's IPAM (allocate, claim, release)."""

    def allocate(self, container: str, ns_path: str, subnet: str | None) -> str: ...
    def claim(self, cidr: str, container: str, ns_path: str) -> str: ...
    def release(self, container: str, addrs: list[str] | None = None) -> None: ...


class RouterIpam:
    """attach's AddressSource: the running router's IPAM over the local API."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def _ask(self, request: rq.Request[R]) -> R:
        try:
            return apiclient.ask(self.state_dir, request)
        except apiclient.RouterDown:
            raise IpamRefused(
                "no router is running to hand out addresses: start one with 'mesh launch'"
            ) from None
        except apiclient.ApiError as exc:
            raise IpamRefused(str(exc)) from None

    def allocate(self, container: str, ns_path: str, subnet: str | None) -> str:
        return self._ask(rq.Allocate(container, ns_path, subnet))

    def claim(self, cidr: str, container: str, ns_path: str) -> str:
        return self._ask(rq.Claim(container, cidr, ns_path))

    def release(self, container: str, addrs: list[str] | None = None) -> None:
        try:
            self._ask(rq.Release(container, addrs))
        except IpamRefused as exc:
            what = ", ".join(addrs) if addrs else "address"
            print(f"mesh: warning: {what} of {container} not released: {exc}", file=sys.stderr)


def attach(
    registry: Registry,
    name: str,
    wants: Sequence[Want],
    *,
    bridge: str,
    mesh_range: str,
    mtu: int,
    ipam: AddressSource,
    dns_address: str | None = None,
    container: Container | None = None,
    ifname: str = CONTAINER_IFACE,
    routes: tuple[str, ...] = (),
    guard_port: bool = True,
    allow_outside: bool = False,
    interrupts: Interrupts | None = None,
    range6: str = "",
) -> tuple[Attachment, list[str]]:
    """Attach ``name`` with the addresses ``wants`` asks for (at least one).
    A container attached already keeps its link and gains the addresses it
    does not have yet (asking again is not an error: Weave's ``attach``).
    With ``dns_address``, the container gets a route to the mesh's DNS
    server on its bridge.  ``container`` is given when the caller knows the
    namespace already (the CNI plugin); ``routes`` are more ``ip route``
    arguments to add inside it.  Returns the record and the addresses this
    call added.

    With ``interrupts``, a signal before anything is made (resolving the
    container, waiting for the lock or the router's IPAM) stops it with
    AttachInterrupted, the addresses given back; from the veth on, the attach
    runs to its end.  A record marked PENDING is on disk while the veth is
    made, so an attach killed there is undone by the next one or by prune.

    IPv6: with ``range6`` (``--ipalloc-range6``), every IPv4 address of the
    range brings its image there (``v6map``); an IPv6 address asked for is
    the operator's, but one inside ``range6`` must be such an image."""
    if not wants:
        raise AttachError("no address asked for")
    abort = interrupts.abortable if interrupts is not None else contextlib.nullcontext
    net = ipaddress.IPv4Network(mesh_range)
    try:
        r6 = v6map.parse_range6(range6, mesh_range)
    except v6map.Range6Error as exc:
        raise AttachError(str(exc)) from None
    explicit6 = [parse_cidr6(w.cidr) for w in wants if w.cidr is not None and is_ipv6(w.cidr)]
    wants = [w for w in wants if w.cidr is None or not is_ipv6(w.cidr)]
    chosen = [
        parse_cidr(w.cidr, mesh_range, allow_outside=allow_outside) if w.cidr is not None else None
        for w in wants
    ]
    try:
        with before_anything(interrupts):
            c = container if container is not None else resolve(name)
    except ContainerError as exc:
        raise AttachError(str(exc)) from None
    if not link_exists(bridge):
        raise AttachError(f"no mesh bridge {bridge!r} on this host: run 'mesh launch' first")
    try:
        with registry.locked(abort()) as records:
            _check_free(records, chosen, explicit6, c.ident)
            have = _reusable(registry, records, c, name, ifname, ipam)
            held = list(have.cidrs) if have else []
            # The addresses, mesh-wide: allocated, or claimed from whoever owns them.
            got = _addresses(ipam, c, wants, chosen, held, net, abort)
            try:
                got6 = _addresses6(r6, explicit6, [*held, *got], have.cidrs6 if have else [])
            except AttachError:
                if got:
                    ipam.release(c.ident, got)
                raise
            if have is not None:
                _add_addresses(have, c, got, got6, ifname, ipam, name)
                return have, [*got, *got6]
            return _new_link(registry, records, c, name, (got, got6), ifname, guard_port, ipam,
                             (mtu, bridge, dns_address, routes)), [*got, *got6]  # fmt: skip
    except Interrupted:  # waiting for the lock: nothing asked, nothing made
        raise AttachInterrupted("interrupted: nothing was attached") from None


def _check_free(
    records: dict[str, Attachment],
    chosen: Sequence[ipaddress.IPv4Interface | None],
    chosen6: Sequence[ipaddress.IPv6Interface],
    ident: str,
) -> None:
    """No address asked for is attached to another container of this host."""
    for rec in records.values():
        if rec.ident == ident:
            continue
        for iface in [*chosen, *chosen6]:
            if iface is None:
                continue
            if any(ipaddress.ip_interface(x).ip == iface.ip for x in rec.addresses):
                raise AttachError(f"{iface.ip} is already attached to {rec.container} on this host")


def _addresses6(
    r6: v6map.Range6 | None,
    explicit: Sequence[ipaddress.IPv6Interface],
    v4s: Sequence[str],
    held6: Sequence[str],
) -> list[str]:
    """The IPv6 addresses a container with IPv4 addresses ``v4s`` gains: the
    images of those in ``r6``, then ``explicit`` (one inside ``r6`` must be
    such an image), less what it holds already."""
    out: list[ipaddress.IPv6Interface] = []
    if r6 is not None:
        for a in v4s:
            img = r6.image(ipaddress.IPv4Interface(a))
            if img is not None:
                out.append(img)
    for iface in explicit:
        if r6 is not None and iface.ip in r6.v6:
            if all(x.ip != iface.ip for x in out):
                origin = r6.origin(iface.ip)
                hint = (
                    f"attach {origin} instead, which brings it"
                    if origin is not None
                    else "give an address outside that range"
                )
                raise AttachError(
                    f"{iface.ip} is in the mesh's IPv6 range {r6.v6}, whose addresses "
                    f"follow the IPv4 ones: {hint}"
                )
            continue
        out.append(iface)
    have = {ipaddress.IPv6Interface(x).ip for x in held6}
    new: list[str] = []
    for x in out:
        if x.ip not in have:
            have.add(x.ip)
            new.append(str(x))
    return new


def _reusable(
    registry: Registry,
    records: dict[str, Attachment],
    c: Container,
    name: str,
    ifname: str,
    ipam: AddressSource,
) -> Attachment | None:
    """The record of ``c`` whose link is still there (it gains addresses), or
    None; an attach killed half-way is undone first."""
    have = records.get(c.ident)
    if have is not None and have.state == PENDING:  # an attach killed half-way
        undo_pending(have, ipam)
        del records[c.ident]
        registry.save(records)
        have = None
    linked = has_link(ifname, c.ns_path)
    if linked and (have is None or not link_exists(have.host_veth)):
        raise AttachError(
            f"{name} has an interface {ifname} the mesh did not make: remove it, or "
            f"'mesh detach {name}' first"
        )
    return have if linked else None


def _addresses(
    ipam: AddressSource,
    c: Container,
    wants: Sequence[Want],
    chosen: Sequence[ipaddress.IPv4Interface | None],
    held: list[str],
    net: ipaddress.IPv4Network,
    abort: Callable[[], contextlib.AbstractContextManager[None]],
) -> list[str]:
    """Each address asked for that ``c`` does not hold yet: allocated, or
    claimed (one outside the mesh range is the operator's, not IPAM's).  On
    a refusal or a signal, what was got is given back."""
    got: list[str] = []
    asking: str | None = None  # the claim in flight, if any
    try:
        with abort():  # an interrupted request's address: the router gives it back
            for want, iface in zip(wants, chosen, strict=True):
                asking = None
                if iface is None:
                    one = str(
                        ipaddress.IPv4Interface(ipam.allocate(c.ident, c.ns_path, want.subnet))
                    )
                else:
                    one = str(iface)
                    if iface.ip in net:
                        asking = None if one in held else one
                        ipam.claim(one, c.ident, c.ns_path)
                if one not in held and one not in got:
                    got.append(one)
    except Interrupted:
        # The router may have answered the request in flight just before the
        # signal, and then it could not tell that nobody read its answer: a
        # container holding nothing yet gives back all it holds, one adding
        # addresses what it got and what it was claiming.
        if not held:
            ipam.release(c.ident, None)
        elif got or asking:
            ipam.release(c.ident, [*got, *([asking] if asking else [])])
        back = f" ({', '.join(got)} given back)" if got else ""
        raise AttachInterrupted(f"interrupted: nothing was attached{back}") from None
    except (IpamRefused, ValueError) as exc:
        if got:
            ipam.release(c.ident, got)
        if isinstance(exc, ValueError):
            raise AttachError("the router handed out a malformed address") from None
        raise AttachError(str(exc)) from None
    return got


def _add_addresses(
    rec: Attachment,
    c: Container,
    got: list[str],
    got6: list[str],
    ifname: str,
    ipam: AddressSource,
    name: str,
) -> None:
    """``got`` and ``got6`` on the link ``rec`` has already (with gratuitous ARPs)."""
    if not got and not got6:
        return
    try:
        if got6:
            ipv6_link_settings(ifname, c.ns_path)
        ip_batch(_address_commands(ifname, got, got6), ns_path=c.ns_path)
        for a in got:
            send_garp(ifname, ipaddress.IPv4Interface(a).ip, ns_path=c.ns_path)
    except (NetdevError, OSError) as exc:
        for a in [*got, *got6]:
            in_ns(c, "ip", "addr", "del", a, "dev", ifname, check=False)
        if got:
            ipam.release(c.ident, got)
        raise AttachError(f"adding {', '.join([*got, *got6])} to {name} failed: {exc}") from None
    rec.cidrs = [*rec.cidrs, *got]
    rec.cidrs6 = [*rec.cidrs6, *got6]


def _address_commands(ifname: str, got: Sequence[str], got6: Sequence[str]) -> list[str]:
    """``ip`` commands that put these addresses on ``ifname`` (IPv6 ones
    without duplicate address detection: the mesh made them unique, and a
    tentative address would not answer for a second)."""
    return [f"addr add {a} dev {ifname}" for a in got] + [
        f"addr add {a} dev {ifname} nodad" for a in got6
    ]


def _new_link(
    registry: Registry,
    records: dict[str, Attachment],
    c: Container,
    name: str,
    both: tuple[list[str], list[str]],
    ifname: str,
    guard_port: bool,
    ipam: AddressSource,
    link: tuple[int, str, str | None, tuple[str, ...]],
) -> Attachment:
    """A new veth for ``c``, recorded PENDING on disk first (a killed attach
    is found and undone); undone whole if it fails."""
    mtu, bridge, dns_address, routes = link
    got, got6 = both
    host = veth_name(c.ident)
    if link_exists(host):  # left over from a container that went away
        ip("link", "del", "dev", host, check=False)
    rec = Attachment(
        name, c.kind, c.ident, c.ns_path, host, got, "", c.hostname,
        ifname=ifname, guard=guard_port, state=PENDING, cidrs6=got6,
    )  # fmt: skip
    records[c.ident] = rec
    try:
        registry.save(records)  # on disk before the veth: a killed attach is found
    except OSError as exc:  # a full or read-only state directory: nothing made yet
        del records[c.ident]
        if got:
            ipam.release(c.ident, got)
        raise AttachError(f"{name} was not attached: {exc.strerror or exc}") from None
    try:
        _make_link(c, rec, mtu, bridge, dns_address, routes)
    except BaseException as exc:
        ip("link", "del", "dev", host, check=False)
        if got:
            ipam.release(c.ident, got)
        del records[c.ident]
        registry.save(records)
        if isinstance(exc, NetdevError | OSError):
            raise AttachError(f"attaching {name} failed and was undone: {exc}") from None
        raise
    rec.state = ""
    return rec


def _make_link(
    c: Container,
    rec: Attachment,
    mtu: int,
    bridge: str,
    dns_address: str | None,
    routes: tuple[str, ...],
) -> None:
    """The veth pair of ``rec``, its addresses and routes in the container,
    its host end on the bridge, and the gratuitous ARPs (``rec.mac`` set).
    Raises NetdevError or OSError; the caller undoes."""
    host, ifname, got, got6 = rec.host_veth, rec.ifname, rec.cidrs, rec.cidrs6
    try:
        make_veth(host, ifname, mtu, c.ns_ref)
    except NetdevError as exc:
        raise AttachError(f"cannot create veth pair for {rec.container}: {exc}") from None
    if got6:
        ipv6_link_settings(ifname, c.ns_path)
    dns = [f"{dns_address}/32"] if dns_address else []  # the IPv6 one is link-local
    # One process per side.  TSO superframes small enough that one sealed
    # message fits one UDP GSO send (65507 bytes): the router never splits a
    # send in two (optional: old kernels lack it).
    addrs = _address_commands(ifname, got, got6)
    ip_batch(
        ["link set dev lo up"]
        + addrs
        + [
            f"link set dev {ifname} gso_max_size {CONTAINER_GSO_MAX_SIZE}",
            f"link set dev {ifname} up",
        ]
        + [f"route replace {d} dev {ifname}" for d in dns]
        + [f"route replace {r}" for r in routes],
        ns_path=c.ns_path,
        optional=frozenset({1 + len(addrs)}),
    )
    ip_batch([f"link set dev {host} master {bridge}", f"link set dev {host} up"])
    # Tell the mesh where these addresses live now (gratuitous ARP).
    for a in got:
        rec.mac = send_garp(ifname, ipaddress.IPv4Interface(a).ip, ns_path=c.ns_path).hex(":")
    if not rec.mac:  # IPv6 only: the guard needs its MAC all the same
        rec.mac = link_mac(c, ifname)


def link_mac(c: Container, ifname: str) -> str:
    """The MAC of ``ifname`` in container ``c``.  Raises NetdevError."""
    out = in_ns(c, "ip", "-o", "link", "show", "dev", ifname).stdout.split()
    if "link/ether" not in out:
        raise NetdevError(f"{ifname} in {c.name} has no Ethernet address")
    return out[out.index("link/ether") + 1]


def undo_pending(rec: Attachment, ipam: AddressSource) -> None:
    """Finish the job of an attach that was killed while making ``rec``: its
    veth (either end removes both) and its addresses go."""
    ip("link", "del", "dev", rec.host_veth, check=False)
    if rec.cidrs:
        ipam.release(rec.ident, rec.cidrs)


RESOLV_MARK = "# written by 'mesh attach'; removed by 'mesh detach'\n"
NETNS_ETC = Path("/etc/netns")


def write_resolv_conf(registry: Registry, rec: Attachment, dns_address: str, domain: str) -> str:
    """Point a named netns at the mesh's DNS (what 'ip netns exec' bind-mounts
    over /etc/resolv.conf), unless it has a resolv.conf of its own.  Returns
    the path written, or ""."""
    if rec.kind != "netns":
        return ""
    path = NETNS_ETC / rec.container / "resolv.conf"
    if path.exists() and not path.read_text().startswith(RESOLV_MARK):
        return ""
    path.parent.mkdir(parents=True, exist_ok=True)
    search = domain.rstrip(".")
    servers = [dns_address]
    if rec.cidrs6:  # the router answers on both (an IPv6-only container asks first there)
        servers.insert(0 if not rec.cidrs else 1, f"{v6map.DNS_ADDRESS6}%{rec.ifname}")
    lines = "".join(f"nameserver {x}\n" for x in servers)
    text = f"{RESOLV_MARK}{lines}search {search}\noptions ndots:1\n"
    atomic_write(path, text.encode(), 0o644)
    with registry.locked() as records:
        if rec.ident in records:
            records[rec.ident].resolv_conf = str(path)
    return str(path)


def remove_resolv_conf(rec: Attachment) -> None:
    if not rec.resolv_conf:
        return
    path = Path(rec.resolv_conf)
    with contextlib.suppress(OSError):
        if path.read_text().startswith(RESOLV_MARK):
            path.unlink()
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only if nothing else is in it


def _range6(range6: tuple[str, str] | None, rec: Attachment) -> v6map.Range6 | None:
    """The ranges (IPv4, IPv6) as a Range6; None when off or unreadable."""
    if range6 is None or not rec.cidrs6:
        return None
    try:
        return v6map.parse_range6(range6[1], range6[0])
    except v6map.Range6Error:
        return None


def detach(
    registry: Registry,
    name: str,
    ipam: AddressSource,
    addrs: Sequence[str] = (),
    range6: tuple[str, str] | None = None,
) -> tuple[Attachment, list[str]] | None:
    """Undo an attach and release its addresses; with ``addrs``, only those
    (the link goes with the last one; an IPv4 address takes its image in
    ``range6``, the pair (IPv4 range, IPv6 range), along).  Returns the
    record and the addresses taken away, or None if the container was not
    attached."""
    with registry.locked() as records:
        rec = next((r for r in records.values() if r.container == name or r.ident == name), None)
        try:
            c: Container | None = resolve(name)
        except ContainerError:
            c = None
        if rec is None and c is not None:
            rec = records.get(c.ident)
        if rec is None:
            if c is not None and has_link(CONTAINER_IFACE, c.ns_path) and not addrs:
                in_ns(c, "ip", "link", "del", "dev", CONTAINER_IFACE, check=False)
                return Attachment(name, c.kind, c.ident, c.ns_path, "", [], ""), []
            if c is None:
                raise AttachError(f"{name} is neither attached nor a known container or namespace")
            return None
        drop = rec.addresses
        if addrs:
            drop = _dropped(rec, name, addrs, _range6(range6, rec))
        if len(drop) < len(rec.addresses):
            for a in drop:
                in_ns(rec, "ip", "addr", "del", a, "dev", rec.ifname, check=False)
            rec.cidrs = [x for x in rec.cidrs if x not in drop]
            rec.cidrs6 = [x for x in rec.cidrs6 if x not in drop]
            drop4 = [x for x in drop if not is_ipv6(x)]
            if drop4:
                ipam.release(rec.ident, drop4)
            return rec, drop
        # Deleting either end of a veth pair removes both.
        ip("link", "del", "dev", rec.host_veth, check=False)
        remove_resolv_conf(rec)
        del records[rec.ident]
        ipam.release(rec.ident)
        return rec, drop


def _dropped(
    rec: Attachment, name: str, addrs: Sequence[str], r6: v6map.Range6 | None
) -> list[str]:
    """What ``mesh detach ADDR... CONTAINER`` takes from ``rec``: each address
    named, and with an IPv4 one its image in the IPv6 range (the pair goes
    together, as it came).  Raises AttachError."""
    drop: list[str] = []
    for text in addrs:
        try:
            want = ipaddress.ip_interface(text).ip
        except ValueError:
            raise AttachError(
                f"invalid address {text!r}: expected an address like 10.32.0.5 or fd32::5"
            ) from None
        match = [x for x in rec.addresses if ipaddress.ip_interface(x).ip == want]
        if not match:
            have = ", ".join(rec.addresses) or "none"
            raise AttachError(f"{name} does not have {want} (it has {have})")
        drop += [m for m in match if m not in drop]
    if r6 is not None:
        for a in [x for x in drop if not is_ipv6(x)]:
            img = r6.image(ipaddress.IPv4Interface(a))
            drop += [x for x in rec.cidrs6 if img is not None and x == str(img) and x not in drop]
    return drop


def forget(
    registry: Registry, ident: str, kinds: tuple[str, ...] = ("docker", "podman")
) -> Attachment | None:
    """The engine removed this container: its record (if it is one of
    ``kinds``) goes now, before its addresses are released (a record left
    behind would claim an address IPAM hands to the next container).  Its
    veth went with its namespace; its resolv.conf and anti-spoofing rules go
    with the record."""
    with registry.locked() as records:
        rec = records.get(ident)
        if rec is None or rec.kind not in kinds:
            return None
        del records[ident]
        if link_exists(rec.host_veth):
            ip("link", "del", "dev", rec.host_veth, check=False)
        remove_resolv_conf(rec)
    return rec


def host_end(c: Container, address: str) -> tuple[str, str]:
    """(the interface in container ``c`` holding ``address``, the host end of
    its veth pair).  Raises AttachError if there is none."""
    ip_only = address.split("/")[0]
    shown = in_ns(c, "ip", "-o", "-4", "addr", "show", "to", ip_only, check=False).stdout.split()
    if len(shown) < 2:
        raise AttachError(f"{c.name} has no interface with {ip_only}")
    ifname = shown[1]
    link = in_ns(c, "ip", "-o", "link", "show", "dev", ifname, check=False).stdout
    peer = link.split(":")[1].strip().partition("@if")[2] if ":" in link else ""
    for line in ip("-o", "link", "show", check=False).stdout.splitlines():
        index, _, rest = line.partition(": ")
        if index.strip() == peer:
            return ifname, rest.split(":")[0].split("@")[0]
    raise AttachError(f"the host end of {c.name}'s {ifname} is not in this namespace")


def find(registry: Registry, key: str) -> Attachment | None:
    """The record of a container by its id (or a prefix of it) or name."""
    records = registry.read()
    return next(
        (r for r in records.values() if key in (r.ident, r.container) or r.ident.startswith(key)),
        None,
    )


def container_state(rec: Attachment) -> str:
    """What the engine says of a Docker or podman record's container:
    "running", "stopped" (it exists, it does not run), "gone" (removed), or
    "unknown" (no engine answers: disabled here, or restarting)."""
    try:
        return "running" if find_container(rec.kind, rec.ident) is not None else "gone"
    except ContainerError:
        answers = probe.docker_answers() if rec.kind == "docker" else probe.podman_available()
        return "stopped" if answers else "unknown"


def container_gone(rec: Attachment) -> bool:
    """True when the container of a record whose link is gone no longer exists
    (a Docker or podman container that was removed, a namespace deleted); a
    restarting container, or one of an engine that does not answer, is kept."""
    if rec.kind in ("docker", "podman"):
        try:
            return find_container(rec.kind, rec.ident) is None
        except ContainerError:
            return False  # not running (restarting), or no engine to ask: keep it
    return not os.path.exists(rec.ns_path)


def prune(registry: Registry, ipam: AddressSource | None = None) -> list[Attachment]:
    """Forget the records of containers that are gone without a detach (the
    router runs 'mesh prune' when it finds their namespaces gone): their
    anti-spoofing rules and resolv.conf go with them.  An attach that was
    killed half-way (a PENDING record: no attach holds the lock now) is
    undone, its addresses given back through ``ipam``."""
    gone: list[Attachment] = []
    with registry.locked() as records:
        for key, rec in list(records.items()):
            if rec.state == PENDING and ipam is not None:
                undo_pending(rec, ipam)
                gone.append(records.pop(key))
                continue
            if link_exists(rec.host_veth) or not container_gone(rec):
                continue
            remove_resolv_conf(rec)
            gone.append(records.pop(key))
    return gone


def reattach_all(registry: Registry, bridge: str) -> int:
    """After a relaunch, put the host ends of recorded attachments back on the bridge."""
    n = 0
    with registry.locked() as records:
        for key, rec in list(records.items()):
            if rec.state == PENDING:
                continue  # a killed attach: prune or the next attach gives its addresses back
            if not link_exists(rec.host_veth):
                if container_gone(rec):
                    del records[key]  # the container went away while we were down
                # else: stopped (or its engine is not up yet): it keeps its
                # record, and is attached again when it starts
                continue
            ip("link", "set", "dev", rec.host_veth, "master", bridge, check=False)
            n += 1
    return n
