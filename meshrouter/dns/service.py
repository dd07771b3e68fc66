"""The DNS server's trio shell: UDP and TCP sockets on the bridge, and the
upstream resolvers for names outside the mesh.  Answers come from
``dnsanswer.Answerer``; this only moves bytes.

Both sockets are bound to the DNS address *and* to the bridge device
(SO_BINDTODEVICE): the kernel then sends the answers out of the bridge to the
container, on-link, with no route into the mesh range on the host.

Garbage is dropped and counted; a query no upstream answers within
``UPSTREAM_TIMEOUT`` (each) gets SERVFAIL; at most ``MAX_PENDING`` forwarded
queries wait at once (more are dropped: the client asks again).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections import Counter
from pathlib import Path

import trio

from meshrouter.base.boundary import Boundary
from meshrouter.base.errors import BadPacket
from meshrouter.dns.answer import Answerer, Reply

log = logging.getLogger("meshrouter.dns")

UPSTREAM_TIMEOUT = 2.0
MAX_PENDING = 256
TCP_IDLE = 10.0
RCVBUF = 1 << 20
_LEN = struct.Struct("!H")
_TC = 0x02  # the truncation bit, in the third byte of a DNS header


def parse_upstreams(
    text: str, own: str, resolv_conf: Path = Path("/etc/resolv.conf")
) -> list[tuple[str, int]]:
    """``ADDR[:PORT],...``, or the nameservers of resolv.conf when empty (our own
    address left out).  Raises ValueError on a bad entry."""
    items: list[str] = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        with contextlib.suppress(OSError):
            for line in resolv_conf.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    items.append(parts[1])
    out = []
    for item in items:
        host, _, port = item.rpartition(":") if item.count(":") == 1 else (item, "", "53")
        host = host or item
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
            number = int(port)
        except (OSError, ValueError):
            raise ValueError(f"invalid DNS upstream {item!r}: expected ADDR or ADDR:PORT") from None
        if host != own:
            out.append((host, number))
    return out


class DnsServer:
    def __init__(
        self,
        answerer: Answerer,
        *,
        address: str,
        port: int,
        device: str | None,
        upstreams: list[tuple[str, int]],
        boundary: Boundary | None = None,
        also: tuple[str, ...] = (),
    ) -> None:
        self.answerer = answerer
        self.also = also  # more addresses (the IPv6 one): served if they can be bound
        self.served: tuple[str, ...] = ()  # what it listens on, once serving
        self.boundary = boundary if boundary is not None else Boundary(log)
        self.address = address
        self.port = port
        self.device = device
        self.upstreams = upstreams
        self.counters: Counter[str] = Counter()
        self._pending = 0

    def _socket(self, kind: int, address: str) -> trio.socket.SocketType:
        sock = trio.socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.device:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.device.encode())
        return sock

    async def _bound(self, address: str) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
        """A UDP and a listening TCP socket on ``address``.  Raises OSError."""
        udp = self._socket(socket.SOCK_DGRAM, address)
        tcp = self._socket(socket.SOCK_STREAM, address)
        try:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            await udp.bind((address, self.port))
            await tcp.bind((address, self.port))
            tcp.listen(64)
        except OSError:
            udp.close()
            tcp.close()
            raise
        return udp, tcp

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        pairs = [await self._bound(self.address)]  # the first address must be served
        served = [self.address]
        for extra in self.also:
            try:
                pairs.append(await self._bound(extra))
                served.append(extra)
            except OSError as exc:
                log.warning("no DNS on %s port %d: %s", extra, self.port, exc)
        try:
            async with trio.open_nursery() as nursery:
                for udp, tcp in pairs:
                    nursery.start_soon(self._udp_loop, udp, nursery)
                    await nursery.start(
                        trio.serve_listeners, self._tcp_client, [trio.SocketListener(tcp)]
                    )
                self.served = tuple(served)
                log.info(
                    "DNS for %s on %s port %d (upstream: %s)",
                    self.answerer.domain,
                    " and ".join(served),
                    self.port,
                    ", ".join(f"{h}:{p}" for h, p in self.upstreams) or "none",
                )
                task_status.started()
        finally:
            for udp, tcp in pairs:
                udp.close()
                tcp.close()

    # -- UDP ------------------------------------------------------------------------

    async def _udp_loop(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            data, client = await sock.recvfrom(65535)
            try:
                out = self.answerer.answer_untrusted(data, tcp=False)
            except BadPacket:
                continue  # counted by the answerer
            except Exception as exc:  # a bug: this query alone goes unanswered
                self.boundary.failed("dns", exc, trio.current_time())
                continue
            if isinstance(out, Reply):
                with contextlib.suppress(OSError):
                    await sock.sendto(out.data, client)
            elif self._pending >= MAX_PENDING:
                self.counters["upstream_dropped"] += 1
            else:
                self._pending += 1
                nursery.start_soon(self._forward_udp, sock, out.query, client)

    async def _forward_udp(
        self, sock: trio.socket.SocketType, query: bytes, client: tuple[str, int]
    ) -> None:
        try:
            answer = await self._upstream(query, tcp=False)
            if answer is None:
                answer = self.answerer.servfail(query)
            if answer is not None:
                with contextlib.suppress(OSError):
                    await sock.sendto(answer, client)
        finally:
            self._pending -= 1

    # -- TCP ------------------------------------------------------------------------

    async def _tcp_client(self, stream: trio.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                while True:
                    with trio.move_on_after(TCP_IDLE):
                        query = await _read_message(stream)
                    if not query:
                        return
                    try:
                        out = self.answerer.answer_untrusted(query, tcp=True)
                    except BadPacket:
                        return
                    except Exception as exc:  # a bug: this client alone is dropped
                        self.boundary.failed("dns", exc, trio.current_time())
                        return
                    if isinstance(out, Reply):
                        answer: bytes | None = out.data
                    else:
                        answer = await self._upstream(out.query, tcp=True)
                        if answer is None:
                            answer = self.answerer.servfail(out.query)
                    if answer is None:
                        return
                    await stream.send_all(_LEN.pack(len(answer)) + answer)

    # -- upstream ---------------------------------------------------------------------

    async def _upstream(self, query: bytes, *, tcp: bool) -> bytes | None:
        """The first upstream's answer, or None (counted) when none answers.
        Asked over UDP; a truncated answer is asked again over TCP when the
        client came by TCP (a UDP client gets it truncated and retries by TCP)."""
        qid = query[:2]
        for host, port in self.upstreams:
            with trio.move_on_after(UPSTREAM_TIMEOUT):
                try:
                    answer = await _ask_udp(host, port, query)
                    if tcp and len(answer) > 2 and answer[2] & _TC:
                        answer = await _ask_tcp(host, port, query)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    answer = b""
                if answer[:2] == qid and len(answer) >= 12:
                    self.counters["upstream_answers"] += 1
                    return answer
        self.counters["upstream_failures"] += 1
        return None

    def statistics(self) -> dict[str, int]:
        return {
            **self.answerer.counters,
            **self.counters,
            "entries": len(self.answerer.records.live()),
        }


async def _ask_udp(host: str, port: int, query: bytes) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with trio.socket.socket(family, socket.SOCK_DGRAM) as s:
        await s.connect((host, port))
        await s.send(query)
        while True:
            answer = await s.recv(65535)
            if answer[:2] == query[:2]:
                return answer


async def _ask_tcp(host: str, port: int, query: bytes) -> bytes:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(_LEN.pack(len(query)) + query)
        return await _read_message(stream)


async def _read_message(stream: trio.abc.ReceiveStream) -> bytes:
    """One length-prefixed DNS message from a TCP stream; b"" at its end."""
    buf = b""
    need = _LEN.size
    size = None
    while len(buf) < need:
        chunk = await stream.receive_some(need - len(buf))
        if not chunk:
            return b""
        buf += chunk
        if size is None and len(buf) >= _LEN.size:
            (size,) = _LEN.unpack(buf[: _LEN.size])
            buf = buf[_LEN.size :]
            need = size
    return buf
