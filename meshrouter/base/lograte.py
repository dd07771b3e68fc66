"""Rate limits for log lines caused by remote input (sans-IO)."""

from __future__ import annotations

import logging
from collections.abc import Hashable

LOG_REPEAT_INTERVAL = 60.0  # the same complaint about the same address: once a minute
MAX_KEYS = 1000


class LogLimiter:
    """Lets the same kind of complaint about the same source through once per
    ``interval``.  Bounded: past ``max_keys`` sources the oldest is forgotten."""

    __slots__ = ("_seen", "interval", "max_keys")

    def __init__(self, interval: float = LOG_REPEAT_INTERVAL, max_keys: int = MAX_KEYS) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._seen: dict[Hashable, tuple[float, int]] = {}  # key -> (logged at, held back)

    def allow(self, key: Hashable, now: float) -> int | None:
        """None: hold this one back.  Else log it, and say that the returned
        number of lines like it were held back since the last one."""
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval:
            self._seen[key] = (seen[0], seen[1] + 1)
            return None
        self._seen.pop(key, None)
        self._seen[key] = (now, 0)
        if len(self._seen) > self.max_keys:
            del self._seen[next(iter(self._seen))]
        return seen[1] if seen is not None else 0


class Complaints:
    """Log lines about remote input, each kind about each address at most once
    per ``LogLimiter.interval``, saying how many like it were held back."""

    __slots__ = ("_limiter", "log")

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._limiter = LogLimiter()

    def say(self, level: int, where: str, kind: str, msg: str, *args: object, now: float) -> None:
        held = self._limiter.allow((where.rsplit(":", 1)[0], kind), now)
        if held is None:
            return
        if held:
            msg += f" ({held} more like it in the last {self._limiter.interval:.0f}s not logged)"
        self.log.log(level, msg, *args)
