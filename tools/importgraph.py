"""Check the import graph of meshrouter and launcher: no cycle, and every import
goes down the rooms of docs/architecture.md.

    python3 -m tools.importgraph           # print the graph; exit 1 on a violation

Reads the source with ``ast`` (imports inside functions count too, except those
under ``if TYPE_CHECKING``); nothing is imported.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Rooms, lowest first: a module may import its own room and the rooms below.
ROOMS: list[tuple[str, set[str]]] = [
    (
        "leaves",
        {
            "__init__",
            "constants",
            "errors",
            "names",
            "status",
            "config",
            "apiclient",
            "lograte",
            "state",
            "dockerapi",
            "inputs",
            "boundary",
        },
    ),
    (
        "sans-IO cores",
        {
            "crypto",
            "replay",
            "handshake",
            "keyring",
            "framing",
            "control",
            "wire",
            "pmtu",
            "gso",
            "tso",
            "session",
            # The shared state of a data session (C or Python); the C module's
            # Loop runs only in the data-plane thread (forwarder).
            "dataplane",
            "_dataplane",
            "topology",
            "routes",
            "targets",
            "mactable",
            "fastpath",
            "ipam",
            "reclaim",
            "dnsrecords",
            "dnsanswer",
            "dockerplugin",
        },
    ),
    ("thread boundary", {"link"}),
    ("mesh core", {"mesh"}),
    ("data-plane thread", {"libc", "udp", "netdev", "send", "receive", "forwarder"}),
    (
        "trio shell",
        {
            "ipamstore",
            "ipamservice",
            "fdb",
            "fastpathservice",
            "dnsservice",
            "hostaccess",
            "engine",
            "pluginservice",
            "router",
            "api",
            "metrics",
            "daemon",
            # launch's checks of the host (sockets, /sys): the client imports it lazily
            "preflight",
        },
    ),
    ("test support", {"testing"}),
]
SANS_IO_FORBIDDEN = {"trio", "socket", "time", "random", "select"}
CLIENT_FORBIDDEN = {"trio", "numpy", "nacl", "cffi"}
CLIENT_MAY_USE = ROOMS[0][1] | {"netdev"}  # the leaves, and ip/link helpers
# Leaves that are clients of a local socket (the router's API, the Docker
# engine's) or write files: blocking I/O, used by the client and by threads.
IO_LEAVES = {"meshrouter.apiclient", "meshrouter.state", "meshrouter.dockerapi"}


def short_name(module: str) -> str:
    """``meshrouter.testing.netlab`` -> ``testing``; ``meshrouter`` -> ``__init__``."""
    return module.split(".")[1] if module.startswith("meshrouter.") else "__init__"


def room_of(module: str) -> int:
    short = short_name(module)
    for rank, (_, members) in enumerate(ROOMS):
        if short in members:
            return rank
    raise KeyError(f"{module} is in no room: add it to tools/importgraph.py ROOMS")


def imports_of(path: Path, module: str, *, top_level: bool = False) -> set[str]:
    """What ``module`` imports; with ``top_level``, only what loading it imports
    (not the imports deferred into functions)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        deferred = top_level and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        if deferred or (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)):
            skip |= {id(n) for n in ast.walk(node)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg in ("meshrouter", "launcher"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {i for i in imports_of(p, m) if i in mods and i != m} for m, p in mods.items()}


def problems() -> list[str]:
    mods = modules()
    g = graph()
    out: list[str] = []
    for m, deps in g.items():
        raw = imports_of(mods[m], m)
        top = {i.split(".")[0] for i in raw}
        if m.startswith("launcher"):
            loaded = imports_of(mods[m], m, top_level=True)
            bad = {i.split(".")[0] for i in loaded} & CLIENT_FORBIDDEN
            for d in loaded & set(mods):
                if d.startswith("meshrouter") and short_name(d) not in CLIENT_MAY_USE:
                    out.append(f"{m} imports {d}: the client may use only {sorted(CLIENT_MAY_USE)}")
            if bad:
                out.append(f"{m} imports {sorted(bad)}: the client stays light")
            continue
        rank = room_of(m)
        if ROOMS[rank][0] in ("sans-IO cores", "thread boundary", "mesh core", "leaves"):
            bad = top & SANS_IO_FORBIDDEN
            if bad and m not in IO_LEAVES:
                out.append(f"{m} ({ROOMS[rank][0]}) imports {sorted(bad)}")
        for d in deps:
            if d.startswith("meshrouter") and room_of(d) > rank:
                out.append(f"{m} ({ROOMS[rank][0]}) imports {d} ({ROOMS[room_of(d)][0]})")
    # cycles
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1:
                out.append("cycle: " + " -> ".join([*stack[stack.index(d) :], d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    return out


def main() -> int:
    for m, deps in sorted(graph().items()):
        print(f"{m}: {', '.join(sorted(deps)) or '-'}")
    found = problems()
    for p in found:
        print("importgraph:", p, file=sys.stderr)
    print(f"{len(graph())} modules, {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
