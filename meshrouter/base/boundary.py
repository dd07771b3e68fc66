"""Where one request ends: what escapes it is counted and logged, and goes no further.

Every server and task that serves input (the API socket, the Docker plugin,
the metrics port, DNS, the engine watcher, the dialer) hands what one request
raised to ``Boundary.failed``: a ``ValueError`` (``BadInput`` among them) is
the client's mistake, anything else is our bug, logged with its traceback at
most once a minute per kind.  Either way that request alone is refused, and
the router keeps serving the next one.
"""

from __future__ import annotations

import logging
from collections import Counter

from meshrouter.base.lograte import LogLimiter


class Boundary:
    """The error counts and the log limiter of one router's servers."""

    def __init__(self, log: logging.Logger) -> None:
        self.counts: Counter[str] = Counter()
        self._log = log
        self._limit = LogLimiter()

    def failed(self, where: str, exc: BaseException, now: float) -> str:
        """One request at ``where`` ("api", "plugin", ...) raised ``exc``:
        count it, log it (rate-limited) and return the client's one line."""
        bad_input = isinstance(exc, ValueError)
        kind = "bad_requests" if bad_input else "errors"
        self.counts[f"{where}_{kind}"] += 1
        if bad_input:
            message = str(exc) or type(exc).__name__
        else:
            message = f"internal error ({type(exc).__name__}); the router logged it"
        held = self._limit.allow((where, kind, type(exc).__name__), now)
        if held is not None:
            more = f" ({held} more like it held back)" if held else ""
            if bad_input:
                self._log.warning("%s: refused a request: %s%s", where, message, more)
            else:
                self._log.error(
                    "%s: a request failed; it alone was refused%s", where, more, exc_info=exc
                )
        return message
