"""The ``mesh`` command: launches the router and attaches containers to the mesh."""

import sys


def _interrupted(kind: type[BaseException], exc: BaseException, tb: object) -> None:
    """Ctrl-C before a command took charge of it (while Python loads the
    client): one line, never a traceback."""
    if issubclass(kind, KeyboardInterrupt):
        print("mesh: interrupted", file=sys.stderr)
    else:
        sys.__excepthook__(kind, exc, tb)  # type: ignore[arg-type]


sys.excepthook = _interrupted
