"""Flush the connection tracking table of the network namespace it runs in,
as a NAT box's reboot does (this machine has no ``conntrack`` tool):
``ip netns exec BOX python3 -m meshrouter.testing.conntrack``.

One ctnetlink IPCTNL_MSG_CT_DELETE with no attributes deletes every entry
of the family; the kernel's acknowledgement says whether it did."""

from __future__ import annotations

import socket
import struct
import sys

NETLINK_NETFILTER = 12
CT_DELETE = (1 << 8) | 2  # NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2


def flush(family: int = socket.AF_INET) -> None:
    """Raises OSError when the kernel refuses."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as s:
        body = struct.pack("!BBH", family, 0, 0)
        header = struct.pack("=IHHII", 16 + len(body), CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, 1, 0)
        s.send(header + body)
        reply = s.recv(65536)
        _len, mtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", reply)
        if mtype == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", reply, 16)
            if err:
                raise OSError(-err, "the kernel refused to flush the conntrack table")


if __name__ == "__main__":
    try:
        flush()
    except OSError as exc:
        sys.exit(f"cannot flush conntrack: {exc}")
