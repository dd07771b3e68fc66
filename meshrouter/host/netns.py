"""Work inside a container's network namespace without starting a process for each step.

``ip_batch`` runs several ``ip`` commands in one process (in a namespace with
nsenter, or here); ``entered`` switches this thread into a namespace for a
moment, so that sockets made inside it (a packet socket for a gratuitous ARP)
and interface lookups belong to the container, then switches back.  The
``mesh`` command is single-threaded, which is what setns(2) needs.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator, Sequence

from meshrouter.host.netdev import NetdevError, link_exists

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    import ctypes  # only where os.setns is missing

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(ns_path: str) -> Iterator[None]:
    """This thread in the network namespace at ``ns_path`` for the ``with`` block."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        target = os.open(ns_path, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def has_link(name: str, ns_path: str) -> bool:
    """Whether interface ``name`` exists in the namespace at ``ns_path``."""
    with entered(ns_path):
        return link_exists(name)


def ip_batch(
    commands: Sequence[str], *, ns_path: str | None = None, optional: frozenset[int] = frozenset()
) -> None:
    """Run ``ip`` commands (one per line, without the leading ``ip``) in one
    process.  A failure of a command whose 0-based position is in ``optional``
    is ignored; any other raises NetdevError naming the command."""
    argv = ["ip", "-force", "-batch", "-"]
    if ns_path is not None:
        argv = ["nsenter", f"--net={ns_path}", *argv]
    proc = subprocess.run(
        argv, input="\n".join(commands) + "\n", capture_output=True, text=True, check=False
    )
    if proc.returncode == 0:
        return
    failed = [int(n) - 1 for n in re.findall(r"Command failed -:(\d+)", proc.stderr)]
    if failed and all(k in optional for k in failed):
        return
    bad = [commands[k] for k in failed if k not in optional and k < len(commands)]
    detail = proc.stderr.strip().splitlines()
    reason = detail[0] if detail else f"exit status {proc.returncode}"
    raise NetdevError(f"'ip {bad[0] if bad else commands[0]}' failed: {reason}")


def ipv6_link_settings(ifname: str, ns_path: str) -> None:
    """IPv6 on ``ifname`` in the namespace at ``ns_path`` for addresses the
    mesh gives: on (an engine may have turned it off), and no router
    advertisements or autoconfiguration from whoever sends them (the mesh's
    addresses are static; a container sending RAs is dropped by the guard
    anyway).  Raises NetdevError when IPv6 cannot be turned on."""
    with entered(ns_path):
        base = f"/proc/sys/net/ipv6/conf/{ifname}/"
        try:
            # accept_dad 0: its link-local address works at once (the DNS
            # server answers there), not after a second of tentative state
            settings = (
                ("disable_ipv6", "0"),
                ("accept_ra", "0"),
                ("autoconf", "0"),
                ("accept_dad", "0"),
            )
            for key, value in settings:
                with open(base + key, "w") as f:
                    f.write(value)
        except OSError as exc:
            raise NetdevError(
                f"cannot turn on IPv6 on {ifname} ({exc.strerror}): is IPv6 disabled "
                "in this kernel (ipv6.disable=1)?"
            ) from None
