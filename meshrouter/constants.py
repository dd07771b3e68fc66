"""Protocol constants shared by the cores and the shells."""

PORT = 6783
PROTOCOL_MIN_VERSION = 1
PROTOCOL_MAX_VERSION = 1

MAGIC = b"meshrtr\x00"

# Underlay overhead budget for a data datagram, worst case (IPv6 underlay):
# IPv6 40 + UDP 8 + our header 13 + AEAD tag 32 + frame length 2.
# A 1500-byte underlay leaves 1405 bytes for an Ethernet frame, i.e. an L3 MTU
# of 1391 in the container.  We use Weave's figure, 1376, which leaves slack.
DEFAULT_UNDERLAY_MTU = 1500
CONTAINER_MTU = 1376
ETH_HEADER = 14

HEARTBEAT_INTERVAL = 1.0  # seconds between control and UDP heartbeats
HEARTBEAT_TIMEOUT = 6.0  # no control message for this long: connection closed
UDP_TIMEOUT = 5.0  # no UDP heard for this long: connection not established
HANDSHAKE_TIMEOUT = 10.0

MAX_CONTROL_MESSAGE = 1 << 20  # bytes; larger control frames are refused
# A session stops being used well before its 64-bit counters could wrap: the
# router closes a connection whose session has sent REKEY_AFTER_MESSAGES (the
# reconnect makes fresh keys); sealing refuses outright at the hard limit.
REKEY_AFTER_MESSAGES = 1 << 48
NONCE_HARD_LIMIT = 1 << 60
