"""The router's status: one typed schema, shared by the router, the API, the metrics and the CLI.

The router builds a ``RouterStatus``; the API sends it as JSON; ``mesh status``
and ``mesh report`` read it back as the same types.  Machine-readable values
(``ConnState``, ``TargetState``) are what scripts and the metrics match on;
the words a person reads are made in ``launcher.views``.  This module imports
nothing heavy: the client loads it on every command.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypedDict


class ConnState(StrEnum):
    """Where a control connection is in its life (``mesh.TRANSITIONS``)."""

    HANDSHAKE = "handshake"  # TCP up, handshake running
    PENDING = "pending"  # handshake done, UDP not yet (or no longer) heard both ways
    ESTABLISHED = "established"  # authenticated UDP flows both ways
    CLOSED = "closed"


class TargetState(StrEnum):
    WAITING = "waiting"
    CONNECTING = "connecting"
    CONNECTED = "connected"


class ConnectionStatus(TypedDict, total=False):
    peer: str | None  # None until the handshake completes
    nickname: str
    address: str
    udp_address: str | None
    direction: str  # "outbound" | "inbound"
    state: str  # a ConnState value
    encrypted: bool
    cipher: str
    protocol_version: int
    uptime: float
    clock_skew: float | None  # the peer's wall clock minus ours (None: not heard yet)
    peer_version: str  # the peer's software version ("" before it said)
    key_epoch: int  # the mesh password (epoch) this connection was made under
    auth: str  # how the peer authenticated: "password" or "certificate"
    seen_as: SeenAs  # our addresses as this peer sees them (reflexive)
    cert: CertStatus | None  # the peer's certificate (None: the password)
    relay: str | None  # the peer carrying this connection's control stream (a tunnel)
    path: str  # of the data: "sleeve" (the router), "kernel" (trusted VXLAN), "fallback"
    datagram_size: int
    pmtu_confirmed: bool
    tx_messages: int
    rx_messages: int
    reassembly_drops: int
    tx_packets: int
    rx_packets: int
    tx_frames: int
    rx_frames: int
    tx_bytes: int
    rx_bytes: int


class TargetStatus(TypedDict):
    address: str
    state: str  # a TargetState value
    discovered: bool
    peer: str | None
    attempts: int
    last_error: str | None
    next_try_in: float | None


class LinkInfo(TypedDict):
    peer: str
    address: str
    established: bool
    outbound: bool


class PeerStatus(TypedDict):
    peer: str
    nickname: str
    uid: int
    version: int
    reachable: bool
    via: str | None
    # Through a relay: "end to end" (sealed for it alone, the relay reads
    # nothing: a connection through the relay holds our own keys) or "by
    # each hop" (each relay opens and re-seals); "" when direct.
    sealed: str
    relay: str  # its --relay: "yes", "no" or "prefer"
    connections: list[LinkInfo]


class ShareStatus(TypedDict):
    peer: str
    nickname: str
    owned: int
    used: int | None
    free: int | None
    unreachable_for: float | None  # seconds; None while reachable


class AllocationStatus(TypedDict):
    address: str
    container: str


class IpamStatus(TypedDict):
    range: str
    ready: bool
    init_count: int
    quorum: int
    reclaim_after: float
    shares: list[ShareStatus]
    allocations: list[AllocationStatus]


class DnsEntryStatus(TypedDict):
    name: str
    address: str
    container: str  # "peer/container"
    peer: str  # nickname of the origin


class DnsStatus(TypedDict):
    enabled: bool
    domain: str
    address: str
    addresses: list[str]  # every address it answers on (the IPv4 one, fe80::53)
    ttl: int
    upstream: list[str]
    entries: list[DnsEntryStatus]
    counters: dict[str, int]


class ExposeStatus(TypedDict):
    addresses: list[str]
    masquerade: bool


class OffloadStatus(TypedDict):
    tap: bool
    udp_gso: bool
    udp_gro: bool
    gso_sends: int


class GossipStatus(TypedDict):
    bytes_sent: int
    bytes_received: int


class SeenAs(TypedDict):
    tcp: str  # "" when we dialled it (it sees where we dialled from only then)
    udp: str  # the source of our datagrams as it receives them, "" before any


class NatStatus(TypedDict):
    seen_udp: dict[str, list[str]]  # our UDP address as peers see it -> those peers
    behind_nat: bool  # peers see an address that is none of this host's
    symmetric: bool  # one public address, different ports for different peers
    candidate: str  # the UDP address our record offers to punch to ("" when none)
    public: list[str]  # --nat-public: where a NAT forwards our port (peers dial it)
    # Peers behind other NATs (nickname -> "punched", "punching", or
    # "relayed: no direct path, next try in Ns"): ``tunnel``.
    punching: dict[str, str]


class CertStatus(TypedDict):
    name: str  # the host name it names
    fingerprint: str  # 64 hex digits (operators see the first 16)
    expires: float  # Unix time
    not_before: float
    issuer: str  # the CA key's id, hex
    ranges: list[str]
    groups: list[str]


class CertsStatus(TypedDict):
    """This router's own certificate, and what it holds of the mesh CA's."""

    cert: CertStatus
    cas: list[str]  # the CA key ids it trusts
    revoked: int  # certificates revoked, as far as it knows
    evicted: list[str]  # peer names evicted by revocations (until a new certificate)
    password_accepted: bool  # during a move to certificates: both are


class PasswordStatus(TypedDict):
    epoch: int  # how many times the mesh password was rotated (as this peer knows)
    previous_accepted_for: float  # seconds the previous password is still accepted (0: not)
    peers_with_current: int  # neighbours that said they hold the current key


class MeshStatus(TypedDict):
    """The part the sans-IO mesh core knows."""

    name: str
    nickname: str
    uid: int
    connections: list[ConnectionStatus]
    targets: list[TargetStatus]
    peers: list[PeerStatus]
    counters: dict[str, int]
    gossip: GossipStatus
    password: PasswordStatus
    certs: CertsStatus | None  # None: a mesh on the password alone
    nat: NatStatus


class PingResult(TypedDict):
    """What 'mesh ping' shows: the path and each round trip (None: no answer)."""

    peer: str
    nickname: str
    via: str | None  # the relay, when the peer has no direct link
    via_nickname: str | None
    address: str  # the UDP address the pings went to
    rtt_ms: list[float | None]


class RouterStatus(MeshStatus):
    """Everything ``mesh status --json`` and ``mesh report`` show."""

    version: str
    tasks: int
    threads: int
    port: int
    relay: str  # --relay: "yes", "no" or "prefer"
    bridge: str
    tap: str | None
    ipalloc_range: str
    ipalloc_range6: str  # "" when containers get no IPv6 addresses
    mtu: int
    encryption: bool
    uptime: float
    macs: int
    drops: dict[str, int]
    offload: OffloadStatus
    dataplane: str  # which loop forwards: "c" or "python"
    dataplane_built: bool  # whether the C loop was built (it may still be turned off)
    protocol: str  # the protocol versions spoken, "1" or "1-2"
    start_time: float  # when the router started, Unix time
    ipam: IpamStatus
    dns: DnsStatus
    expose: ExposeStatus
