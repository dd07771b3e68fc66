"""The mesh core, sans-IO: connections and their transition table, topology gossip,
connection targets; subsystems (IPAM, DNS, fast path) plug in as channels.
"""
