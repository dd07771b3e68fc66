"""Protocol constants shared by the cores and the shells."""

PORT = 6783
PROTOCOL_MIN_VERSION = 1
PROTOCOL_MAX_VERSION = 2  # 2: topology gossip by digests (``mesh.spread``)

MAGIC = b"meshrtr\x00"

# What a frame carries through the tunnel when it goes alone in one datagram:
# IPv4 20 (IPv6 40) + UDP 8 + datagram header 15 + AEAD tag (16 or 32 for
# AEGIS-128L) + route header 13 + frame length 4 + virtio_net_hdr 10.  On a
# 1500-byte IPv4 underlay with AEGIS-128L that is 102 bytes, leaving 1398 for
# the Ethernet frame: an L3 MTU of 1384 in the container.  We use Weave's
# figure, 1376.  A larger frame (an IPv6 underlay, a smaller path MTU) is cut
# into two datagrams by the data plane itself: the underlay never fragments.
CONTAINER_MTU = 1376
# TSO superframes small enough that one sealed message fits one UDP GSO send
# (65507 bytes): set on every container-side veth (attach, the Docker driver).
CONTAINER_GSO_MAX_SIZE = 62000
ETH_HEADER = 14
VNET_HDR_LEN = 10  # the virtio_net_hdr in front of every frame the TAP gives or takes

HEARTBEAT_INTERVAL = 1.0  # seconds between control and UDP heartbeats
HEARTBEAT_TIMEOUT = 6.0  # no control message for this long: connection closed
UDP_TIMEOUT = 5.0  # no UDP heard for this long: connection not established
# While a peer of protocol v2 is heard over UDP both ways, that is its
# liveness: its control heartbeats come every CONTROL_HEARTBEAT_QUIET seconds,
# and the control connection is closed only after CONTROL_SILENCE_LIMIT
# seconds without a control message (a TCP path dead while UDP lives).
CONTROL_HEARTBEAT_QUIET = 5.0
CONTROL_SILENCE_LIMIT = 30.0
HANDSHAKE_TIMEOUT = 10.0

FASTPATH_DEVICE = "vxmesh"  # the kernel fast path's VXLAN device, on the bridge
MAX_CONTROL_MESSAGE = 1 << 20  # bytes; larger control frames are refused
# A session stops being used well before its 64-bit counters could wrap: the
# router closes a connection whose session has sent REKEY_AFTER_MESSAGES (the
# reconnect makes fresh keys); sealing refuses outright at the hard limit.
REKEY_AFTER_MESSAGES = 1 << 48
NONCE_HARD_LIMIT = 1 << 60
DNS_ADDRESS = "169.254.53.53"  # the DNS server's address on every host's bridge
DNS_PORT = 53


def protocol_versions() -> str:
    """The protocol versions this release speaks: "1", or "1-2"."""
    if PROTOCOL_MIN_VERSION == PROTOCOL_MAX_VERSION:
        return str(PROTOCOL_MIN_VERSION)
    return f"{PROTOCOL_MIN_VERSION}-{PROTOCOL_MAX_VERSION}"


# --listen values meaning every address of both families (dual-stack)
LISTEN_ALL = ("", "::", "*")
