"""Containers on the mesh: the attachment records, attach and detach, and
what a restart or a removal needs (re-attach, prune).  Used by the client
(mesh attach) and by the daemon (a container that starts again, one that is
gone); blocking, no trio.
"""
