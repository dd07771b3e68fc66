"""This host: the bridge and veths (ip), what the router adds to the host (DNS address,
nftables, expose), the checks launch makes, the root-only unix socket server.  The
client imports only what loads no trio and no pytun.
"""
