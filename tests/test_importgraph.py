"""The rooms of docs/architecture.md hold: no import cycle, imports only go down,
and the client loads none of the router's weight."""

from __future__ import annotations

import subprocess
import sys

from tools import importgraph


def test_no_cycle_and_every_import_goes_down() -> None:
    assert importgraph.problems() == []


def test_the_checker_sees_a_cycle_and_an_upward_import(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real = importgraph.graph()
    bent = {m: set(d) for m, d in real.items()}
    bent["meshrouter.wire"].add("meshrouter.forwarder")
    monkeypatch.setattr(importgraph, "graph", lambda: bent)
    found = importgraph.problems()
    assert any("meshrouter.wire (sans-IO cores) imports meshrouter.forwarder" in p for p in found)
    assert any(p.startswith("cycle: ") for p in found)


def test_the_client_does_not_load_the_router() -> None:
    code = (
        "import sys, launcher.cli, launcher.views, launcher.attach\n"
        "heavy = sorted(m for m in ('trio', 'numpy', 'nacl', 'cffi', 'meshrouter.router',"
        " 'meshrouter.mesh', 'meshrouter.forwarder') if m in sys.modules)\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""
