"""Test support, like ``trio.testing``: used by the tests, the benchmarks and the demo.

* ``control``: ``ConnectionPair`` (two control connections back to back in
  memory) and test identities.
* ``fwdpair``: two real forwarders wired back to back over loopback UDP and
  socketpair "TAPs", no namespaces.
* ``netlab``: hosts in network namespaces joined by a veth underlay, with real
  router processes; ``tcp_transfer`` and status helpers.
* ``fakes``: in-memory doubles of what the mesh core talks to (IPAM, randomness).
"""
