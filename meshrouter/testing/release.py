"""Another version of meshrouter, built from git into a venv of its own: for
benchmarks against an earlier commit and for meshes of mixed versions.

``build(rev)`` checks ``rev`` out (``git worktree``) under the cache
directory, makes a venv that sees this machine's packages (so nothing is
downloaded), installs that checkout into it with its C extension, and
returns the interpreter and the checkout: ``netlab.Lab(python=..., repo=...)``
then runs that version's ``mesh`` and router.  Built once per commit.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from meshrouter.testing.netlab import REPO

CACHE = Path(tempfile.gettempdir()) / "meshrouter-releases"


@dataclass(frozen=True)
class Release:
    rev: str  # the commit, in full
    python: str  # the venv's interpreter, with that commit installed
    repo: Path  # that commit's checkout


def resolve(rev: str) -> str:
    """The commit ``rev`` names: a commit, a tag, or a release tag that this
    clone lacks but CHANGELOG.md names ("tag v0.1.0 = commit 74513ef")."""
    for name in (rev, _from_changelog(rev)):
        if not name:
            continue
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--verify", "-q", f"{name}^{{commit}}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    raise ValueError(f"{rev!r} is no commit of {REPO} (git fetch --tags, or name a commit)")


def _from_changelog(tag: str) -> str | None:
    try:
        text = (REPO / "CHANGELOG.md").read_text()
    except OSError:
        return None
    found = re.search(rf"tag {re.escape(tag)} = commit ([0-9a-f]{{7,40}})", text)
    return found.group(1) if found else None


def build(rev: str, cache: Path = CACHE) -> Release:
    """That commit, installed in a venv of its own (reused when built before)."""
    sha = resolve(rev)
    root = cache / sha[:12]
    tree, venv = root / "tree", root / "venv"
    python = venv / "bin" / "python3"
    done = root / "built"
    if not done.exists():
        root.mkdir(parents=True, exist_ok=True)
        if not tree.exists():
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(tree), sha],
                check=True,
                capture_output=True,
            )
        # No pip of its own: this machine's installs into it.
        subprocess.run(
            [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
            check=True,
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(python),
                "install",
                "-q",
                "--no-deps",
                "--root-user-action=ignore",
                str(tree),
            ],
            check=True,
        )
        done.write_text(sha + "\n")
    return Release(sha, str(python), tree)
