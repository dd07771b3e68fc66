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
    bent["meshrouter.proto.wire"].add("meshrouter.dataplane.forwarder")
    monkeypatch.setattr(importgraph, "graph", lambda: bent)
    found = importgraph.problems()
    assert any(
        "meshrouter.proto.wire (proto) imports meshrouter.dataplane.forwarder (dataplane)" in p
        for p in found
    )
    assert any(p.startswith("cycle: ") for p in found)


def test_every_module_is_in_a_package_of_the_table() -> None:
    for m in importgraph.modules():
        importgraph.package_of(m)  # raises KeyError for a package the table lacks


def test_the_table_runs_one_way() -> None:
    order = list(importgraph.PACKAGES)
    for pkg, allowed in importgraph.PACKAGES.items():
        assert all(order.index(a) < order.index(pkg) for a in allowed), pkg


def test_a_core_that_imports_trio_is_found(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real = importgraph.imports_of

    def bent(path, module, *, top_level=False):  # type: ignore[no-untyped-def]
        found = real(path, module, top_level=top_level)
        return found | {"trio"} if module == "meshrouter.ipam.ring" else found

    monkeypatch.setattr(importgraph, "imports_of", bent)
    assert "meshrouter.ipam.ring (ipam core) imports ['trio']" in importgraph.problems()


def test_the_client_does_not_load_the_router() -> None:
    code = (
        "import sys, launcher.cli, launcher.views, meshrouter.attachments.attach\n"
        "heavy = sorted(m for m in ('trio', 'numpy', 'nacl', 'cffi', 'pytun',"
        " 'meshrouter.daemon.router', 'meshrouter.mesh.core', 'meshrouter.dataplane.forwarder')"
        " if m in sys.modules)\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""
