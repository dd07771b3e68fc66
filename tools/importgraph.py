"""Check the import graph of meshrouter and launcher: no cycle, and every import
goes down the package table (PACKAGES) of docs/architecture.md.

    python3 -m tools.importgraph           # print the graph; exit 1 on a violation

Reads the source with ``ast`` (imports inside functions count too, except those
under ``if TYPE_CHECKING``); nothing is imported.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The packages, lowest first, and what each may import of ours (besides
# ``meshrouter`` itself, which holds only the version).  docs/architecture.md
# says why each boundary is where it is.  A package never imports one listed
# after it, so the graph between packages runs one way.
_BELOW_DAEMON = ("base", "proto", "contract", "host", "dataplane", "mesh", "ipam", "dns")
_BELOW_DAEMON += ("fastpath", "engines", "attachments")
PACKAGES: dict[str, frozenset[str]] = {
    "base": frozenset(),
    "proto": frozenset({"base"}),
    # contract reads and writes certificate files (``certfiles``): proto's format.
    "contract": frozenset({"base", "proto"}),
    "host": frozenset({"base", "contract"}),
    "dataplane": frozenset({"base", "proto", "host"}),
    "mesh": frozenset({"base", "contract", "proto", "dataplane"}),
    "ipam": frozenset({"base", "contract", "proto", "mesh"}),
    "dns": frozenset({"base", "contract", "proto", "mesh", "host"}),
    "fastpath": frozenset({"base", "contract", "proto", "dataplane", "mesh", "host"}),
    "engines": frozenset({"base", "contract", "host"}),
    "attachments": frozenset({"base", "contract", "host", "engines"}),
    # The daemon wires every package above; test support may use the daemon too.
    "daemon": frozenset(_BELOW_DAEMON),
    "testing": frozenset({*_BELOW_DAEMON, "daemon"}),
    # The client: the shared contract, this host's devices and the engines'
    # API client; never the daemon, the mesh core or the data plane.
    "launcher": frozenset({"base", "contract", "host", "proto", "engines", "attachments"}),
}
# The modules of a package that do I/O (sockets, files, processes, threads,
# trio); every other module is a sans-IO core and imports none of CORE_FORBIDDEN.
SHELLS: dict[str, frozenset[str]] = {
    "base": frozenset(),
    "contract": frozenset({"apiclient", "state", "certfiles"}),
    "host": frozenset(
        {"netdev", "hostaccess", "preflight", "unixserver", "netns", "guard", "garp"}
    ),
    "proto": frozenset(),
    "dataplane": frozenset({"udp", "libc", "tap", "send", "receive", "forwarder"}),
    "mesh": frozenset(),
    "ipam": frozenset({"store", "service"}),
    "dns": frozenset({"service"}),
    "fastpath": frozenset({"service", "fdb"}),
    "engines": frozenset({"dockerapi", "probe", "containers", "watcher", "pluginservice"}),
    "attachments": frozenset({"attach", "interrupts", "restart"}),
}
CORE_FORBIDDEN = {"trio", "socket", "time", "random", "os", "select", "subprocess", "threading"}
# Never loaded by these packages, at any depth of their own modules' imports.
CLIENT_NEVER = {"trio", "numpy", "nacl", "cffi", "pytun"}
NEVER = {"dataplane": {"trio"}, "launcher": CLIENT_NEVER, "attachments": CLIENT_NEVER}
# ... except these, which need what they would never load: the certificate
# commands sign and verify (libsodium); 'mesh' loads them only for
# 'mesh ca', 'mesh cert' and 'mesh revoke'.
NEVER_EXCEPT = {"launcher.commands.certs": {"nacl", "cffi"}}


def package_of(module: str) -> str:
    """``meshrouter.ipam.ring`` -> ``ipam``; ``launcher.cli`` -> ``launcher``."""
    parts = module.split(".")
    if parts[0] == "launcher":
        return "launcher"
    if len(parts) < 2:
        return ""  # meshrouter itself (the version)
    if parts[1] not in PACKAGES:
        raise KeyError(f"{module} is in no package of tools/importgraph.py PACKAGES")
    return parts[1]


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


def loaded_by(module: str) -> set[str]:
    """What importing ``module`` loads: its module-level imports, and theirs,
    through our own modules (imports deferred into functions are not followed)."""
    mods = modules()
    seen: set[str] = set()
    out: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen or m not in mods:
            continue
        seen.add(m)
        found = imports_of(mods[m], m, top_level=True)
        out |= found
        todo += [i for i in found if i in mods]
        # ``import a.b.c`` runs the __init__ of a and a.b too
        todo += [".".join(i.split(".")[:k]) for i in found for k in range(1, i.count(".") + 1)]
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {i for i in imports_of(p, m) if i in mods and i != m} for m, p in mods.items()}


def problems() -> list[str]:
    mods = modules()
    g = graph()
    out: list[str] = []
    for m, deps in sorted(g.items()):
        pkg = package_of(m)
        if not pkg:
            continue
        for d in sorted(deps):
            dpkg = package_of(d)
            if dpkg and dpkg != pkg and dpkg not in PACKAGES[pkg]:
                out.append(f"{m} ({pkg}) imports {d} ({dpkg}): not in PACKAGES[{pkg!r}]")
        leaf = m.split(".")[-1]
        if pkg in SHELLS and leaf not in SHELLS[pkg] and leaf != pkg:
            bad = {i.split(".")[0] for i in imports_of(mods[m], m)} & CORE_FORBIDDEN
            if bad:
                out.append(f"{m} ({pkg} core) imports {sorted(bad)}")
        never = NEVER.get(pkg)
        if never:
            loaded = {i.split(".")[0] for i in loaded_by(m)} & never
            loaded -= NEVER_EXCEPT.get(m, set())
            if loaded:
                out.append(f"{m} ({pkg}) loads {sorted(loaded)}")
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
