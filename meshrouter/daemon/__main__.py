"""``python -m meshrouter.daemon [--state-dir DIR] [router options] [PEER...]``:
the router in the foreground.  ``mesh launch`` starts this; ``mesh router``
(the container image's entry point) execs it after reading ``--config``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meshrouter.contract import config
from meshrouter.contract.state import default_state_dir
from meshrouter.daemon.main import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshrouter.daemon", description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=None)
    config.add_arguments(parser)
    ns = parser.parse_args(argv)
    return run(config.from_namespace(ns), ns.state_dir or default_state_dir())


if __name__ == "__main__":
    sys.exit(main())
