"""meshrouter: a userspace encrypted mesh router for containers.

docs/architecture.md maps the packages (``base``, ``contract``, ``host``,
``proto``, ``dataplane``, ``mesh``, ``ipam``, ``dns``, ``fastpath``,
``engines``, ``attachments``, ``daemon``) and the table of what each may
import.  This module holds the version only: the client loads it first.
"""

__version__ = "0.2.0"
