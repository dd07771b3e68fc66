"""libc's ``read`` and ``recvmsg``, called through cffi on the data plane's hot path.

``os.read`` and ``socket.recvmsg_into`` raise ``BlockingIOError`` when a
non-blocking descriptor is drained, and every drain ends that way: raising
costs ~2 us warm and 15-50 us on a cold CPU, more than the read itself.  These
return -1 and leave the reason in ``errno()`` instead; cffi drops the GIL
around them.  ``RecvMsg`` sets up a ``struct msghdr`` once, so a read builds
no Python lists or tuples for the sender's address and control messages.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

import cffi

from meshrouter.proto.crypto import Ptr

_ffi = cffi.FFI()
_ffi.cdef(
    """
    long read(int fd, void *buf, unsigned long count);
    struct iovec { void *iov_base; unsigned long iov_len; };
    struct msghdr {
        void *msg_name; unsigned int msg_namelen;
        struct iovec *msg_iov; unsigned long msg_iovlen;
        void *msg_control; unsigned long msg_controllen;
        int msg_flags;
    };
    long recvmsg(int fd, struct msghdr *msg, int flags);
    """
)
_C = _ffi.dlopen(None)

# read(fd, buf, count): up to ``count`` bytes into ``buf``; -1 on error (see
# ``errno()``).  The C function itself: no Python frame per call.
read: Callable[[int, Ptr, int], int] = _C.read
# recvmsg(fd, RecvMsg.msg, flags), with the lengths reset as RecvMsg says; -1 on error.
recvmsg: Callable[[int, Any, int], int] = _C.recvmsg

NAME_SIZE = 28  # struct sockaddr_in6 (a sockaddr_in fits in it)
CONTROL_SIZE = 64  # room for one UDP_GRO control message, and then some
_CMSG = struct.Struct("=QiiI")  # cmsg_len, cmsg_level, cmsg_type, an int of data


def errno() -> int:
    """errno of the last failed call in this thread."""
    return int(_ffi.errno)


class RecvMsg:
    """A ``struct msghdr`` for reading one IPv4 datagram (or a GRO batch) into
    ``buf``: made once, reused for every read.

    Before each ``recvmsg`` set ``msg.msg_namelen = NAME_SIZE`` and
    ``msg.msg_controllen = CONTROL_SIZE`` (the kernel writes back what it used).
    """

    __slots__ = ("_keep", "control", "msg", "name")

    def __init__(self, buf: bytearray) -> None:
        self.name = bytearray(NAME_SIZE)
        self.control = bytearray(CONTROL_SIZE)
        # The struct holds bare pointers: keep the cdata objects that own the
        # iovec and pin the three buffers (pinned bytearrays cannot be resized).
        data = _ffi.from_buffer(buf, require_writable=True)
        name = _ffi.from_buffer(self.name, require_writable=True)
        control = _ffi.from_buffer(self.control, require_writable=True)
        iov = _ffi.new("struct iovec *")
        iov.iov_base = data
        iov.iov_len = len(buf)
        msg = _ffi.new("struct msghdr *")
        msg.msg_name = name
        msg.msg_iov = iov
        msg.msg_iovlen = 1
        msg.msg_control = control
        self.msg = msg
        self._keep = (iov, data, name, control)

    def control_int(self, level: int, kind: int) -> int:
        """The int carried by the first control message if it is (level, kind), else 0."""
        if self.msg.msg_controllen < _CMSG.size:
            return 0
        _len, got_level, got_kind, value = _CMSG.unpack_from(self.control)
        return value if got_level == level and got_kind == kind else 0

    def address(self) -> tuple[str, int]:
        """The sender of the last datagram read (an IPv4 one as such, also when
        a dual-stack socket reads it as ``::ffff:a.b.c.d``)."""
        return sockaddr_address(self.name)


_MAPPED = b"\0" * 10 + b"\xff\xff"


def sockaddr_address(name: bytes | bytearray) -> tuple[str, int]:
    """(host, port) of a raw ``struct sockaddr_in`` or ``sockaddr_in6``."""
    family = int.from_bytes(name[0:2], sys.byteorder)
    port = (name[2] << 8) | name[3]
    if family == socket.AF_INET6:
        raw = bytes(name[8:24])
        if raw.startswith(_MAPPED):
            return socket.inet_ntoa(raw[12:]), port
        return socket.inet_ntop(socket.AF_INET6, raw), port
    return socket.inet_ntoa(bytes(name[4:8])), port
