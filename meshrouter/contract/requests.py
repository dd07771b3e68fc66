"""The client/daemon contract: one type per API request, shared by every
client (``mesh``, the CNI plugin, the Kubernetes sync) and the daemon's
handler table (``daemon.api.HANDLERS``).

A request is a frozen dataclass whose ``op`` names it on the wire; its
fields are its arguments, and ``Result`` the type of its answer.  The client
sends ``to_json()``; the daemon reads one with ``parse_untrusted``, which
checks every field against its annotation and raises ``BadInput`` with one
line naming the request and the field.  Wire form, unchanged since 0.1::

    {"op": "allocate", "container": "c1", "ns_path": "/proc/7/ns/net"}
    -> {"ok": true, "result": "10.32.0.1/12"} | {"ok": false, "error": "..."}

This module imports nothing heavy: the client loads it on every command.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from meshrouter.base.errors import BadInput
from meshrouter.contract.status import DnsStatus, IpamStatus, PingResult, RouterStatus

R = TypeVar("R")


def _arg(default: Any = dataclasses.MISSING, *, what: str = "string", **meta: Any) -> Any:
    """A request field: ``what`` names it in the error for a missing one;
    ``low``/``high`` bound a number, ``bad`` is the error for one out of range."""
    return field(default=default, metadata={"what": what, **meta})


@dataclass(frozen=True, slots=True)
class Request(Generic[R]):
    op: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"op": self.op}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                doc[f.name] = value
        return doc


@dataclass(frozen=True, slots=True)
class Status(Request[RouterStatus]):
    op = "status"


@dataclass(frozen=True, slots=True)
class Connect(Request[str]):
    """-> the target's canonical address."""

    op = "connect"
    peer: str = _arg(what="address string")


@dataclass(frozen=True, slots=True)
class Forget(Request[str]):
    op = "forget"
    peer: str = _arg(what="address string")


@dataclass(frozen=True, slots=True)
class Allocate(Request[str]):
    """-> "ADDR/PREFIX" in the mesh range (or ``subnet``)."""

    op = "allocate"
    container: str = _arg()
    ns_path: str = _arg("")
    subnet: str | None = _arg(None)


@dataclass(frozen=True, slots=True)
class Claim(Request[str]):
    op = "claim"
    container: str = _arg()
    cidr: str = _arg(what="address (CIDR) string")
    ns_path: str = _arg("")


@dataclass(frozen=True, slots=True)
class Release(Request[list[str]]):
    """-> the released addresses (only ``addrs``, when given)."""

    op = "release"
    container: str = _arg()
    addrs: list[str] | None = _arg(None)


@dataclass(frozen=True, slots=True)
class Holder(Request[str | None]):
    """-> the container of this host holding ``address``, or None."""

    op = "holder"
    address: str = _arg()


@dataclass(frozen=True, slots=True)
class PasswordRotate(Request[str]):
    op = "password_rotate"
    password: str = _arg(what='string (and a numeric "window")', empty=True)
    window: float | None = _arg(None)


@dataclass(frozen=True, slots=True)
class Ipam(Request[IpamStatus]):
    op = "ipam"


@dataclass(frozen=True, slots=True)
class Rmpeer(Request[str]):
    op = "rmpeer"
    peer: str = _arg(what="name")


@dataclass(frozen=True, slots=True)
class Ping(Request[PingResult]):
    op = "ping"
    peer: str = _arg(what="name")
    count: int = _arg(3, low=1, high=100, bad="must be a number from 1 to 100")
    interval: float = _arg(0.2, low=0.01, high=10, bad="must be from 0.01 to 10 seconds")


@dataclass(frozen=True, slots=True)
class Dns(Request[DnsStatus]):
    op = "dns"


@dataclass(frozen=True, slots=True)
class DnsAdd(Request[int]):
    """-> how many entries are new."""

    op = "dns_add"
    container: str = _arg()
    names: list[str] = _arg()
    addrs: list[str] = _arg()


@dataclass(frozen=True, slots=True)
class DnsRemove(Request[int]):
    """-> how many entries went."""

    op = "dns_remove"
    container: str = _arg()
    name: str | None = _arg(None)
    addr: str | None = _arg(None)


@dataclass(frozen=True, slots=True)
class DnsLookup(Request[list[str]]):
    op = "dns_lookup"
    name: str = _arg()


@dataclass(frozen=True, slots=True)
class Expose(Request[str]):
    """-> "ADDR/PREFIX, ..." (the host's addresses on the mesh)."""

    op = "expose"
    cidr: str | None = _arg(None)
    masquerade: bool = _arg(True)
    fqdn: str | None = _arg(None)


@dataclass(frozen=True, slots=True)
class Hide(Request[str]):
    op = "hide"


@dataclass(frozen=True, slots=True)
class Reset(Request[str]):
    """-> a sentence; the router then stops."""

    op = "reset"


@dataclass(frozen=True, slots=True)
class Stop(Request[str]):
    op = "stop"


REQUESTS: dict[str, type[Request[Any]]] = {
    cls.op: cls
    for cls in (
        Status,
        Connect,
        Forget,
        Allocate,
        Claim,
        Release,
        Holder,
        PasswordRotate,
        Ipam,
        Rmpeer,
        Ping,
        Dns,
        DnsAdd,
        DnsRemove,
        DnsLookup,
        Expose,
        Hide,
        Reset,
        Stop,
    )
}


def parse_untrusted(doc: Any) -> Request[Any]:
    """The request a client sent.  Raises only BadInput, with one line."""
    if not isinstance(doc, dict) or not isinstance(doc.get("op"), str):
        raise BadInput('request must be a JSON object with an "op" string')
    cls = REQUESTS.get(doc["op"])
    if cls is None:
        raise BadInput(f"unknown op {doc['op']!r}")
    args = {f.name: _value(cls.op, f, doc.get(f.name)) for f in dataclasses.fields(cls)}
    return cls(**args)


def _value(op: str, f: dataclasses.Field[Any], value: Any) -> Any:
    kind = str(f.type)
    optional = kind.endswith("| None")
    if value is None or (value == "" and not f.metadata.get("empty")):
        if optional:
            return None
        if f.default is not dataclasses.MISSING:
            return f.default
        if kind.startswith("list"):
            raise BadInput(f'"{op}" needs "{f.name}", a list of strings')
        raise BadInput(f'"{op}" needs a "{f.name}" {f.metadata["what"]}')
    if kind.startswith("str"):
        if not isinstance(value, str):
            raise BadInput(f'"{op}" needs a "{f.name}" {f.metadata["what"]}')
        return value
    if kind.startswith("list"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadInput(f'"{op}" needs "{f.name}", a list of strings')
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise BadInput(f'"{op}": "{f.name}" must be true or false')
        return value
    # int, float (optional or not)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "int" and not isinstance(value, int):
        number = False
    low, high = f.metadata.get("low"), f.metadata.get("high")
    if not number or (low is not None and not low <= value <= high):
        bad = f.metadata.get("bad", "must be a number")
        raise BadInput(f'"{op}": "{f.name}" {bad}')
    return float(value) if kind.startswith("float") else value
