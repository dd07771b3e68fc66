"""meshrouter: a userspace encrypted mesh router for containers.

The protocol cores (``handshake``, ``control``, ``crypto``, ``replay``,
``dataplane``, ``mactable``, ``framing``) are sans-IO: they take bytes and a
``now`` timestamp and return bytes, events and deadlines.  The trio shells
(``router``, ``tap``, ``api``) own sockets, the TAP fd and timers.
"""

__version__ = "0.1.0"
