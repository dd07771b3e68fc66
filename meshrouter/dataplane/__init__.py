"""The data plane: per-link sessions, path MTU, GSO/GRO and TSO helpers, the MAC table, the
UDP socket and TAP, the forwarder thread and its C loop.  Never imports trio or the mesh
core; what crosses to the control plane is in link.
"""
