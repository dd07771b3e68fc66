"""A handshake with a router from a certificate and key given as files, to see
how the router answers (tests: another CA, an expired certificate, someone
else's certificate without its key).  Prints one line: "OPEN" or
"CLOSED: <reason>".

    python -m meshrouter.testing.certclient HOST PORT CERT KEY CA NAME_HEX NICK
"""

from __future__ import annotations

import os
import socket
import sys
import time

from meshrouter.contract.certfiles import read_certs
from meshrouter.proto import cert as mc
from meshrouter.proto.control import ConnectionClosed, ControlConnection, HandshakeComplete
from meshrouter.proto.handshake import AUTH_CERT, Credentials, Identity


def main(argv: list[str]) -> int:
    host, port, cert_path, key_path, ca_path, name_hex, nick = argv
    (host_cert,) = read_certs(cert_path)
    (seed,) = mc.dearmor(open(key_path).read(), mc.PEM_KEY)  # noqa: SIM115
    trust = mc.Trust.of(read_certs(ca_path))
    ident = Identity(
        name=bytes.fromhex(name_hex),
        nickname=nick,
        uid=int.from_bytes(os.urandom(8)),
        udp_port=6783,
        auth=AUTH_CERT,
    )
    conn = ControlConnection(
        initiator=True,
        identity=ident,
        psk=b"",
        ephemeral_private=os.urandom(32),
        recv_index=7,
        now=time.monotonic(),
        credentials=Credentials(host_cert, seed, trust, time.time()),
    )
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(conn.data_to_send())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except TimeoutError:
            break
        if not data:
            conn.receive_eof(time.monotonic())
        else:
            conn.receive_data(data, time.monotonic())
        out = conn.data_to_send()
        if out:
            s.sendall(out)
        while (ev := conn.next_event()) is not None:
            if isinstance(ev, HandshakeComplete):
                print("OPEN", flush=True)
                return 0
            if isinstance(ev, ConnectionClosed):
                print(f"CLOSED: {ev.reason}", flush=True)
                return 1
        if not data:
            break
    print("CLOSED: no answer", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
