"""meshrouter: a userspace encrypted mesh router for containers.

docs/architecture.md maps the package: the sans-IO cores (``handshake``,
``control``, ``wire``, ``session``, ``topology``, ``ipam``, ``mesh`` and
others) take bytes and a ``now`` and return bytes, events, actions and
deadlines; the forwarder thread (``send``, ``receive``, ``forwarder``) moves
frames; the trio shell (``router``, ``api``, ``daemon``) owns sockets and
timers; ``link`` is the one thing the two threads share.
"""

__version__ = "0.2.0"
