"""Host certificates in the mesh core (sans-IO): the credentials each new
connection's handshake uses, renewal, and revocations.

A revocation (``cert.Revocation``, signed by the mesh CA) reaches one router
from the operator (``mesh revoke --file F``) and floods: each router checks
the CA's signature, keeps it (the shell persists it: ``Evicted``), passes it
to every neighbour (control message REVOKE) and sends all it holds to each new
neighbour, so a router that was down learns them too.  Then it closes every
connection authenticated by a revoked certificate, refuses its handshakes
(``Trust.verify``; counted as ``handshakes_refused_revoked``), and the shell
evicts the peer names it lists: their DNS entries go for good and their
address shares are taken over at once (IPAM's majority rule still holds).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from meshrouter.base.errors import BadPacket
from meshrouter.base.names import format_name
from meshrouter.mesh.actions import Evicted, Redial
from meshrouter.proto.cert import Certificate, Revocation, Trust, decode_revocation_untrusted
from meshrouter.proto.control import MessageType
from meshrouter.proto.handshake import AUTH_CERT, Credentials

if TYPE_CHECKING:
    from meshrouter.mesh.core import Conn, Mesh

log = logging.getLogger("meshrouter")

REVOKED = "was revoked by the mesh CA"  # in every refusal of a revoked certificate
RETIRED = "the mesh moved to certificates: the password is no longer accepted"
CERT_EPOCH = 1 << 31  # the key epoch of a connection authenticated by certificates
UPGRADE_RETRY = 10.0  # a replacement by certificate not made by then: dialled again


class Certs:
    def __init__(self, mesh: Mesh, cert: Certificate, seed: bytes, trust: Trust) -> None:
        self.m = mesh
        self.cert = cert
        self.seed = seed
        self.trust = trust
        self.revocations: list[Revocation] = []
        self.wall_offset = 0.0  # wall clock minus ``now``: the shell sets it

    def credentials(self, now: float) -> Credentials:
        return Credentials(self.cert, self.seed, self.trust, now + self.wall_offset)

    # -- renewal ---------------------------------------------------------------

    def check_name(self, cert: Certificate) -> None:
        if cert.name != self.m.me or cert.nickname != self.m.nickname:
            raise ValueError(
                f"the new certificate is for {cert.describe()}, and this router is "
                f"{self.m.nickname!r} ({self.m.name}): a renewal keeps the name (sign it "
                f"with 'mesh ca sign DIR {self.m.nickname} --peer-name {self.m.name}')"
            )

    def renew(self, cert: Certificate, seed: bytes, trust: Trust) -> None:
        """A new certificate (and maybe key and CAs) for this host: the next
        handshakes use it; connections made under the old one go on."""
        self.check_name(cert)
        trust.revoked.update(self.trust.revoked)
        self.cert, self.seed, self.trust = cert, seed, trust

    # -- revocations -------------------------------------------------------------

    def restore(self, revocations: list[Revocation]) -> None:
        """Revocations saved by an earlier run (already checked by the shell)."""
        for rev in revocations:
            try:
                self.trust.check_revocation(rev)
            except BadPacket:
                continue  # of a CA we no longer trust
            if self.trust.add_revocation(rev):
                self.revocations.append(rev)
                self.m.maker.evicted |= {n for n in rev.names if n != self.m.me}

    def revoke(self, rev: Revocation, now: float, sender: Conn | None = None) -> list[bytes]:
        """Take in a revocation (the operator's, or a neighbour's).  Returns the
        peer names it newly evicts.  Raises BadPacket when our CA did not sign it."""
        self.trust.check_revocation(rev)
        new = self.trust.add_revocation(rev)
        if not new:
            return []
        self.revocations.append(rev)
        self.m.counters["revocations"] += 1
        fingerprints = {fp for fp, _ in new}
        names = tuple(dict.fromkeys(name for _, name in new if name != self.m.me))
        log.warning(
            "certificate(s) revoked by the mesh CA%s: %s; evicting their peers",
            f" (from {sender.label})" if sender is not None else "",
            ", ".join(f"{format_name(n)} ({self.m.nickname_of(n)})" for n in names) or "none here",
        )
        for conn in list(self.m.conns.values()):
            res = conn.result
            if res is not None and res.cert is not None and res.cert.fingerprint in fingerprints:
                self.m.counters["connections_closed_revoked"] += 1
                self.m.close_connection(conn, f"its certificate {REVOKED}", now)
        for conn in list(self.m.peers.values()):
            if conn is not sender:
                self.m.send_message(conn, MessageType.REVOKE, rev.raw)
        self.m.maker.evict(set(names))
        self.m.act(Evicted(names))
        return list(names)

    def on_message(self, conn: Conn, payload: bytes, now: float) -> None:
        try:
            self.revoke(decode_revocation_untrusted(payload), now, conn)
        except BadPacket as exc:
            self.m.counters["revocations_bad"] += 1
            self.m.complaints.say(
                logging.WARNING,
                conn.label,
                "revocation",
                "revocation from %s refused: %s",
                conn.label,
                exc,
                now=now,
            )

    def peer_up(self, conn: Conn) -> None:
        for rev in self.revocations:
            self.m.send_message(conn, MessageType.REVOKE, rev.raw)

    def tick(self, now: float) -> None:
        """Connections made by the password to a peer that has a certificate
        too are replaced by one made by certificate, one per tick, make
        before break: the side that dialled dials again beside it; the new
        connection wins the tie-break (``CERT_EPOCH``), the old one closes."""
        for conn in list(self.m.peers.values()):
            if conn.key_epoch >= CERT_EPOCH or not conn.peer_auth & AUTH_CERT:
                continue
            if conn.target is not None and now - conn.rekey_asked >= UPGRADE_RETRY:
                conn.rekey_asked = now
                self.m.counters["upgrades_to_certificates"] += 1
                self.m.act(Redial(conn.target))
                return
            if conn.target is None and now - conn.connected_at >= 3 * UPGRADE_RETRY:
                # The peer has not replaced it (it holds no target for us): break.
                self.m.close_connection(conn, "moving to certificates", now)
                return
