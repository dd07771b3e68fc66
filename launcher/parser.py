"""The error a command ends with, and the parser that says a bad argument in one line.
Light: ``mesh --help`` loads only this and argparse."""

from __future__ import annotations

import argparse

TYPE_CHECKING = False  # not typing's: the client's first modules load no typing
if TYPE_CHECKING:
    from typing import NoReturn


class CliError(Exception):
    """Printed as 'mesh: <message>' with exit status 1."""


class Parser(argparse.ArgumentParser):
    """A bad argument is one line that says where help is, not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")
