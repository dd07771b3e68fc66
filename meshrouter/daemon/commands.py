"""The operator's commands, as the API's handler table calls them
(``api.RouterApi``): peers and targets, the password, addresses, names, the
host's own place on the mesh.

Each checks what it was given, asks the core or service that decides, has
the router ``pump`` what that produced, and returns one value or raises
``OperatorError``/``BadInput`` (ValueErrors: the API answers them as the
request's error, and the router serves the next request).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol

import trio

from meshrouter.base import v6map
from meshrouter.base.errors import BadInput, BadPacket, OperatorError
from meshrouter.base.inputs import format_address, split_address
from meshrouter.base.names import format_name
from meshrouter.contract.status import DnsStatus, PingResult, RouterStatus
from meshrouter.dns.channel import DnsChannel
from meshrouter.dns.records import normalise_name
from meshrouter.host import hostaccess
from meshrouter.host.netdev import NetdevError
from meshrouter.host.preflight import is_local_address
from meshrouter.mesh.certs import Certs
from meshrouter.mesh.core import Mesh
from meshrouter.proto.cert import (
    KEY_BYTES,
    PEM_CERT,
    PEM_KEY,
    PEM_REVOCATION,
    CertRefused,
    Trust,
    dearmor,
    decode_cert_untrusted,
    decode_revocation_untrusted,
    format_time,
    public_key_of,
)
from meshrouter.proto.handshake import derive_psk
from meshrouter.proto.keyring import DEFAULT_WINDOW

if TYPE_CHECKING:
    from meshrouter.daemon.api import Asker
    from meshrouter.daemon.router import Router

log = logging.getLogger("meshrouter")

EXPOSE_CONTAINER = "host:expose"  # the IPAM and DNS key of the host's own addresses
PING_TIMEOUT = 1.0


class Owners(Protocol):
    """What rmpeer needs of IPAM."""

    def owners(self) -> set[bytes]: ...
    def rmpeer(self, peer: bytes) -> int: ...


def rmpeer(mesh: Mesh, ipam: Owners, dns: DnsChannel, who: str) -> str:
    """Take over the address share of a dead peer named ``who`` (name or
    nickname); its DNS entries go too.  Raises OperatorError with the reason."""
    match = mesh.peers_named(who) or [n for n in ipam.owners() if format_name(n) == who]
    if not match:
        raise OperatorError(
            f"no peer named {who!r} (see 'mesh status peers' or 'mesh status ipam')"
        )
    name = match[0]
    if name == mesh.me:
        raise OperatorError("that is this peer")
    if name in mesh.peers:
        raise OperatorError(f"peer {who} is connected: stop it ('mesh stop') before rmpeer")
    n = ipam.rmpeer(name)
    dns.peer_gone(name)
    log.info("rmpeer %s: took over %d range(s) of its address share", who, n)
    return f"{n} range(s) of {format_name(name)} reclaimed"


class Commands:
    def __init__(self, router: Router) -> None:
        self.r = router
        self.stop_requested = router.stop_requested
        self.boundary = router.boundary

    def status(self) -> RouterStatus:
        return self.r.status()

    def dns_status(self) -> DnsStatus:
        return self.r.dns_status()

    # -- peers ---------------------------------------------------------------

    def connect(self, address: str) -> str:
        host, port = split_address(address, self.r.opts.port)
        if port == self.r.opts.port and is_local_address(host):
            raise BadInput(f"{address} is this router itself: give another host's address")
        result = self.r.mesh.maker.connect(address, trio.current_time())
        self.r.pump()
        return result

    def forget(self, address: str) -> str | None:
        result = self.r.mesh.maker.forget(address, trio.current_time())
        self.r.pump()
        return result

    async def ping(self, who: str, count: int, interval: float) -> PingResult:
        """``count`` pings to peer ``who`` (name or nickname) over the encrypted
        UDP path, ``interval`` apart: the path, and each round trip in ms
        (None: no answer within a second).  A peer with no direct link is
        reached through a relay: the path says which, and the pings measure
        the first hop (relays forward frames, not pings)."""
        mesh = self.r.mesh
        names = mesh.peers_named(who)
        if not names:
            raise BadInput(f"no peer named {who!r} (see 'mesh status peers')")
        name = names[0]
        if name == mesh.me:
            raise BadInput(f"{who} is this router")
        hop = mesh.links.routes.next_hop.get(name)
        if hop is None:
            raise BadInput(f"{who} is not reachable from here (see 'mesh status peers')")
        link = mesh.links.by_name.get(hop)
        fwd = self.r.forwarder
        if link is None or link.udp_addr is None or fwd is None:
            raise BadInput(f"{who}: no encrypted UDP path yet (see 'mesh status connections')")
        rtts: list[float | None] = []
        for i in range(count):
            if i:
                await trio.sleep(interval)
            token = os.urandom(8)
            fwd.ping(hop, token)
            rtt = None
            with trio.move_on_after(PING_TIMEOUT):
                # The forwarder's thread writes the answer and never calls into trio.
                while (rtt := fwd.pongs.pop(token, None)) is None:  # noqa: ASYNC110
                    await trio.sleep(0.001)
            rtts.append(None if rtt is None else round(rtt * 1000, 3))
        return {
            "peer": format_name(name),
            "nickname": mesh.nickname_of(name),
            "via": None if hop == name else format_name(hop),
            "via_nickname": None if hop == name else mesh.nickname_of(hop),
            "address": format_address(*link.udp_addr),
            "rtt_ms": rtts,
        }

    def rmpeer(self, who: str) -> str:
        result = rmpeer(self.r.mesh, self.r.ipam, self.r.dns, who)
        self.r.pump()
        return result

    # -- certificates --------------------------------------------------------------

    def _certs(self) -> Certs:
        if self.r.mesh.certs is None:
            raise OperatorError(
                "this router runs on the mesh password, not a certificate: launch it with "
                "--cert FILE --key FILE --ca FILE"
            )
        return self.r.mesh.certs

    def revoke(self, text: str) -> str:
        """``mesh revoke --file F``: a revocation the mesh CA signed, for the
        whole mesh."""
        certs = self._certs()
        try:
            revs = [decode_revocation_untrusted(b) for b in dearmor(text, PEM_REVOCATION)]
            evicted = [n for rev in revs for n in certs.revoke(rev, trio.current_time())]
        except BadPacket as exc:
            raise OperatorError(f"not a revocation of this mesh's CA: {exc}") from None
        self.r.pump()
        if not evicted:
            return "nothing new: this router already held that revocation"
        who = ", ".join(f"{self.r.mesh.nickname_of(n)} ({format_name(n)})" for n in evicted)
        return f"revoked {who}: evicted here; the mesh carries the revocation to every peer"

    def renew_cert(self, cert_pem: str, key_pem: str, ca_pem: str) -> str:
        """``mesh cert renew``: the next handshakes use the new certificate;
        no connection is closed.  On a router that runs on the password, it
        installs the first one (``--ca`` needed): its connections move to
        certificates where the peer has one too."""
        certs = self.r.mesh.certs
        if certs is None and not ca_pem:
            raise OperatorError(
                "this router runs on the password: its first certificate needs the CA too "
                "(--ca FILE)"
            )
        try:
            (raw,) = dearmor(cert_pem, PEM_CERT)
            new = decode_cert_untrusted(raw)
            (seed,) = dearmor(key_pem, PEM_KEY)
            cas = (
                [decode_cert_untrusted(b) for b in dearmor(ca_pem, PEM_CERT)]
                if ca_pem or certs is None
                else list(certs.trust.cas.values())
            )
        except (BadPacket, ValueError) as exc:
            raise OperatorError(f"not a certificate, key and CA: {exc}") from None
        if len(seed) != KEY_BYTES or public_key_of(seed) != new.public_key:
            raise OperatorError("the key is not the new certificate's key")
        trust = Trust.of(c for c in cas if c.is_ca)
        try:
            trust.verify(new, time.time())
            self.r.mesh.install_certs(new, seed, trust, time.time(), trio.current_time())
        except CertRefused as exc:
            raise OperatorError(f"the new certificate is refused: {exc.reason}") from None
        except ValueError as exc:
            raise OperatorError(str(exc)) from None
        self.r.pump()
        what = "renewed" if certs is not None else "installed (connections move to it)"
        return f"certificate {what}: {new.short}, valid until {format_time(new.not_after)}"

    def retire_password(self) -> str:
        """``mesh password retire``: the end of a move to certificates, for the
        whole mesh."""
        try:
            closed = self.r.mesh.retire_password(trio.current_time())
        except ValueError as exc:
            raise OperatorError(str(exc)) from None
        self.r.pump()
        return (
            f"the password is retired: {closed} connection(s) made by it closed here; the "
            "mesh carries it to every router with a certificate"
        )

    async def rotate_password(self, password: str, window: float | None) -> str:
        """``mesh password rotate``: the new password's key for the whole mesh."""
        if not password:
            raise OperatorError("the new password file is empty")
        key = await trio.to_thread.run_sync(derive_psk, password.encode())
        span = window if window is not None else DEFAULT_WINDOW
        if not 1 <= span <= 30 * 86400:
            raise OperatorError("the window must be between 1 second and 30 days")
        try:
            epoch = self.r.mesh.rotate(key, trio.current_time(), span)
        except ValueError as exc:
            raise OperatorError(str(exc)) from None
        self.r.pump()
        return (
            f"mesh password rotated (epoch {epoch}); the mesh carries it to every peer; "
            f"the old one is accepted for {span:.0f}s more"
        )

    # -- addresses ---------------------------------------------------------------

    def _ident(self, container: str) -> str:
        return f"{self.r.mesh.name}/{container}"

    async def allocate(
        self, container: str, ns_path: str, subnet: str | None, asker: Asker | None = None
    ) -> str:
        return await self._unless_gone(
            container, self.r.ipam.allocate(self._ident(container), ns_path, subnet), asker
        )

    async def claim(
        self, cidr: str, container: str, ns_path: str, asker: Asker | None = None
    ) -> str:
        return await self._unless_gone(
            container, self.r.ipam.claim(cidr, self._ident(container), ns_path), asker
        )

    async def _unless_gone(
        self, container: str, request: Awaitable[str], asker: Asker | None
    ) -> str:
        """The address ``request`` gives ``container``; one new to it goes back
        at once when its asker has gone meanwhile (an interrupted attach): no
        allocation outlives the request that nobody will record."""
        before = self.r.ipam.held(self._ident(container))
        got = await request
        if asker is not None and asker.gone():
            addr = int(ipaddress.IPv4Interface(got).ip)
            if addr not in before:
                self.r.ipam.release(self._ident(container), [got])
                log.info("%s for %s released: its asker went away", got, container)
        return got

    def release(self, container: str, addrs: list[str] | None = None) -> list[str]:
        return self.r.ipam.release(self._ident(container), addrs)

    def release_address(self, address: str) -> bool:
        """Let one address go, whichever container of ours holds it (Docker's
        driver); its attachment record goes too."""
        gone = self.r.ipam.release_address(address) is not None
        if gone:
            self.r.containers_gone()
        return gone

    def holder(self, address: str) -> str | None:
        """Which container of this host holds ``address`` (its API name), if any."""
        ident = self.r.ipam.holder(address)
        prefix = f"{self.r.mesh.name}/"
        return ident[len(prefix) :] if ident and ident.startswith(prefix) else None

    # -- names ------------------------------------------------------------------

    def _fqdn(self, name: str) -> str:
        """``web01`` -> ``web01.mesh.local.``; a name with a dot is taken as whole."""
        try:
            n = normalise_name(name)
        except ValueError as exc:
            raise OperatorError(str(exc)) from None
        return n if "." in n[:-1] else n + self.r.dns_domain

    def dns_add(self, container: str, names: list[str], addrs: list[str]) -> int:
        try:
            ints = [int(ipaddress.IPv4Address(a.split("/")[0])) for a in addrs]
        except ValueError:
            raise OperatorError(f"invalid address in {addrs}: expected IPv4 addresses") from None
        if not names or not ints:
            raise OperatorError("dns-add needs a name and at least one address")
        n = self.r.dns.add(
            self._ident(container), [self._fqdn(x) for x in names], ints, trio.current_time()
        )
        self.r.pump()
        return n

    def dns_remove(self, container: str, name: str | None, addr: str | None) -> int:
        try:
            a = int(ipaddress.IPv4Address(addr.split("/")[0])) if addr else None
        except ValueError:
            raise OperatorError(f"invalid address {addr!r}") from None
        n = self.r.dns.remove(
            self._ident(container),
            trio.current_time(),
            name=self._fqdn(name) if name else None,
            addr=a,
        )
        self.r.pump()
        return n

    def dns_lookup(self, name: str) -> list[str]:
        return sorted(
            {e.address for e in self.r.dns.records.lookup(self._fqdn(name))},
            key=ipaddress.IPv4Address,
        )

    # -- the host's own place on the mesh (expose / hide / reset) -----------------

    def apply_expose(self) -> None:
        """Make what ``expose`` recorded true on this host (after a restart too)."""
        opts, exposed = self.r.opts, self.r.exposed
        for cidr in self._exposed_addresses():
            try:
                hostaccess.add_address(opts.bridge, cidr)
            except NetdevError as exc:
                log.error("cannot expose %s again: %s", cidr, exc)
        if exposed["masquerade"]:
            try:
                hostaccess.masquerade_up(opts.ipalloc_range, opts.bridge, self._range6_text())
            except (NetdevError, OSError) as exc:
                log.error("cannot masquerade for the mesh: %s", exc)

    def _range6_text(self) -> str | None:
        return str(self.r.range6.v6) if self.r.range6 is not None else None

    def _exposed_addresses(self) -> list[str]:
        """What 'mesh expose' put on the bridge: its addresses, and the IPv6
        image of each IPv4 one in the range (--ipalloc-range6)."""
        have = list(self.r.exposed["addresses"])
        r6 = self.r.range6
        if r6 is not None:
            for a in list(have):
                if ":" not in a:
                    img = r6.image(ipaddress.IPv4Interface(a))
                    if img is not None and str(img) not in have:
                        have.append(str(img))
        return have

    def _expose6(self, cidr: str, have: list[str]) -> None:
        """An IPv6 address for the host: the operator's (one of the IPv6
        range must be the image of an address exposed already)."""
        try:
            iface = v6map.parse_address6(cidr)
        except v6map.Range6Error as exc:
            raise OperatorError(str(exc)) from None
        r6 = self.r.range6
        if r6 is not None and iface.ip in r6.v6:
            if str(iface) in self._exposed_addresses():
                return
            origin = r6.origin(iface.ip)
            raise OperatorError(
                f"{iface.ip} is in the mesh's IPv6 range {r6.v6}, whose addresses follow "
                f"the IPv4 ones: expose {origin} instead, which brings it"
            )
        if str(iface) not in have:
            have.append(str(iface))

    async def expose(self, cidr: str | None, masquerade: bool, fqdn: str | None) -> str:
        """Give this host an address on the mesh (allocated, or ``cidr``).  Idempotent."""
        r = self.r
        ident = self._ident(EXPOSE_CONTAINER)
        have = r.exposed["addresses"]
        if cidr is not None and ":" in cidr:
            self._expose6(cidr, have)
        elif cidr is not None:
            iface = str(ipaddress.IPv4Interface(cidr))
            if iface not in have:
                have.append(await r.ipam.claim(iface, ident, ""))
        elif not have:
            have.append(await r.ipam.allocate(ident, "", None))
        r.exposed["masquerade"] = masquerade
        try:
            for a in self._exposed_addresses():
                hostaccess.add_address(r.opts.bridge, a)
            if masquerade:
                hostaccess.masquerade_up(r.opts.ipalloc_range, r.opts.bridge, self._range6_text())
            else:
                hostaccess.masquerade_down()
        except (NetdevError, OSError) as exc:
            raise OperatorError(f"expose failed: {exc}") from None
        r.files.save_expose(r.exposed)
        if r.dns_server is not None and any(":" not in a for a in have):
            r.dns.remove(ident, trio.current_time())
            try:
                names = [fqdn or r.mesh.nickname]
                self.dns_add(EXPOSE_CONTAINER, names, [a for a in have if ":" not in a])
            except OperatorError as exc:  # a nickname that is no DNS name: exposed all the same
                log.warning("exposed host not named in DNS: %s (use -h FQDN)", exc)
        r.pump()
        return ", ".join(self._exposed_addresses())

    def hide(self) -> str:
        r = self.r
        have = self._exposed_addresses()
        for a in have:
            hostaccess.del_address(r.opts.bridge, a)
        hostaccess.masquerade_down()
        r.ipam.release(self._ident(EXPOSE_CONTAINER))  # its names go with it
        r.exposed = {"addresses": [], "masquerade": False}
        r.files.save_expose(r.exposed)
        r.pump()
        return ", ".join(have)

    async def reset(self) -> str:
        """Leave the mesh for good: hide, give the address share away, stop."""
        self.hide()
        result = self.r.ipam.hand_over()
        self.r.pump()
        await trio.sleep(0.5)  # let the ring and the claims reach the new owner
        self.stop_requested.set()
        return result
