"""Mesh password rotation between neighbours (sans-IO): the key ring's epochs
over ROTATE messages, and the re-keying of connections made under an older key.

``mesh password rotate`` gives one router a new key; it tells every neighbour
(ROTATE, sealed by the control connection), which adopt it and pass it on.
While the old key's window lasts, both are accepted; each connection made
under the old key is replaced make-before-break (its dialler dials again; the
new connection wins the tie-break by its newer epoch); when the window ends,
connections still under the old key are closed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from meshrouter.base.errors import BadPacket
from meshrouter.mesh.actions import KeysChanged, Redial
from meshrouter.proto.control import MessageType
from meshrouter.proto.keyring import decode_rotate_untrusted, encode_rotate

if TYPE_CHECKING:
    from meshrouter.mesh.core import Conn, Mesh

log = logging.getLogger("meshrouter")

REKEY_RETRY = 10.0  # a rotation's replacement connection not made by then: dialled again


class Rotation:
    def __init__(self, mesh: Mesh) -> None:
        self.m = mesh

    def on_message(self, conn: Conn, payload: bytes, now: float) -> None:
        try:
            epoch, key, window = decode_rotate_untrusted(payload)
        except BadPacket:
            self.m.counters["control_messages_bad"] += 1
            return
        before = self.m.keys.epoch
        adopted = self.m.keys.receive(conn.name, epoch, key, window, now)
        if not adopted and self.m.keys.epoch != before:
            # Our key came by hand (a new password file) and now has its
            # number: connections made under it are under the current key.
            for c in self.m.peers.values():
                if c.key_epoch == before:
                    c.key_epoch = self.m.keys.epoch
            self.m.act(KeysChanged())
        if adopted:
            self.m.counters["key_rotations_adopted"] += 1
            log.info(
                "the mesh password was rotated (epoch %d, from %s): the old one is "
                "accepted for %.0fs more",
                epoch,
                conn.label,
                window,
            )
            self.m.act(KeysChanged())
            for other in list(self.m.peers.values()):
                self.send(other)  # the sender too: now it knows we hold it
        elif epoch < self.m.keys.epoch:
            self.send(conn)  # it is behind: it learns ours

    def send(self, conn: Conn) -> None:
        """Tell a neighbour our key since a rotation (sealed by the connection)."""
        if self.m.keys.epoch > 0:
            payload = encode_rotate(self.m.keys.epoch, self.m.keys.current, self.m.keys.window)
            self.m.send_message(conn, MessageType.ROTATE, payload)

    def rotate(self, key: bytes, now: float, window: float) -> int:
        """The operator gave a new mesh password (its key): adopt it and pass it
        on.  Returns the new epoch.  Raises ValueError for a key in use."""
        epoch = self.m.keys.rotate(key, now, window)
        self.m.counters["key_rotations_started"] += 1
        log.info(
            "mesh password rotated here (epoch %d): the old one is accepted for %.0fs",
            epoch,
            window,
        )
        self.m.act(KeysChanged())
        for conn in list(self.m.peers.values()):
            self.send(conn)
        return epoch

    def tick(self, now: float) -> None:
        """One connection per tick made under an older key to a peer that holds
        the current one is closed: its target reconnects under the current key.
        When the window ends, connections under the retired key are closed."""
        if self.m.keys.tick(now):
            self.m.act(KeysChanged())
            log.info("the previous mesh password is retired: peers still using it are refused")
        for conn in list(self.m.peers.values()):
            if conn.key_epoch >= self.m.keys.epoch:
                continue
            if not self.m.keys.in_window():
                self.m.close_connection(conn, "its mesh password was rotated out", now)
                continue
            if self.m.keys.holders.get(conn.name, 0) < self.m.keys.epoch:
                continue  # the peer has not got the new key yet
            # Make before break: the side that dialled dials again beside it; the
            # new connection replaces this one when its handshake completes.
            if conn.target is not None and now - conn.rekey_asked >= REKEY_RETRY:
                conn.rekey_asked = now
                self.m.counters["rekeys_rotation"] += 1
                self.m.act(Redial(conn.target))
                return
            if conn.target is None and now - conn.connected_at >= 3 * REKEY_RETRY:
                # The peer has not replaced it (no target for us): break, it redials.
                self.m.close_connection(conn, "re-keying under the rotated mesh password", now)
                return
