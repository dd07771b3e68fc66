"""Ctrl-C, SIGTERM and SIGHUP while ``mesh attach`` or ``detach`` changes a container.

Inside ``Interrupts()`` these signals are recorded instead of raising
wherever the program happens to be.  Code marks where stopping is safe:
``abortable()`` is a region that nothing half-made depends on (waiting for
the router's IPAM, a lock), where a signal raises ``Interrupted`` at once and
the caller undoes what it had asked for; everywhere else the step runs to its
end and ``pending`` says a signal came, for the caller to report.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):  # a BaseException, like KeyboardInterrupt
    """A signal arrived in an abortable region."""


class Interrupts:
    def __init__(self) -> None:
        self.pending: int | None = None  # the first signal that came
        self._abortable = 0
        self._old: dict[int, object] = {}

    def __enter__(self) -> Interrupts:
        for sig in SIGNALS:
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.pending is None:
            self.pending = signum
        if self._abortable:
            raise Interrupted

    @contextlib.contextmanager
    def abortable(self) -> Iterator[None]:
        """A region a signal may end at once (raising ``Interrupted``)."""
        if self.pending is not None:
            raise Interrupted
        self._abortable += 1
        try:
            yield
        finally:
            self._abortable -= 1
