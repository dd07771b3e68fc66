"""The kernel VXLAN path for trusted links: the core's decisions, the rtnetlink FDB writer,
the trio service.
"""
