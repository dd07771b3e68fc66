"""The client/daemon contract: one type per API request, shared by every
client (``mesh``, the CNI plugin, the Kubernetes sync) and the daemon's
handler table (``daemon.api.HANDLERS``).

A request is a frozen record whose ``op`` names it on the wire; its
fields are its arguments, and ``Result`` the type of its answer.  The client
sends ``to_json()``; the daemon reads one with ``parse_untrusted``, which
checks every field against its annotation and raises ``BadInput`` with one
line naming the request and the field.  Wire form, unchanged since 0.1::

    {"op": "allocate", "container": "c1", "ns_path": "/proc/7/ns/net"}
    -> {"ok": true, "result": "10.32.0.1/12"} | {"ok": false, "error": "..."}

This module imports nothing heavy: the client loads it on every command.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar, dataclass_transform

from meshrouter.base.errors import BadInput
from meshrouter.contract.status import DnsStatus, IpamStatus, PingResult, RouterStatus

R = TypeVar("R")
MISSING: Any = object()


class Arg:
    """One field of a request: its name and annotation (``type``, as text),
    its default, and ``metadata``: ``what`` names it in the error for a
    missing one; ``low``/``high`` bound a number, ``bad`` is the error for one
    out of range; ``empty`` lets a string be empty."""

    __slots__ = ("default", "metadata", "name", "type")

    def __init__(self, default: Any, metadata: dict[str, Any]) -> None:
        self.default = default
        self.metadata = metadata
        self.name = ""
        self.type = ""


def _arg(default: Any = MISSING, *, what: str = "string", **meta: Any) -> Any:
    return Arg(default, {"what": what, **meta})


@dataclass_transform(frozen_default=True, field_specifiers=(_arg,))
class Request(Generic[R]):
    """A request: its fields are its class's annotations (made like a frozen
    dataclass's, without the cost of making dataclasses: the client loads
    every request type on every command)."""

    op: ClassVar[str]
    FIELDS: ClassVar[tuple[Arg, ...]] = ()
    __slots__ = ("_values",)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        out = []
        own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 - no inspect: it is slow to load
        for name, kind in own.items():
            if str(kind).startswith("ClassVar"):
                continue
            spec = cls.__dict__.get(name, MISSING)
            arg = spec if isinstance(spec, Arg) else Arg(spec, {"what": "string"})
            arg.name, arg.type = name, str(kind)
            out.append(arg)
            if spec is not MISSING:
                delattr(cls, name)  # the instance's value, not the spec, is what q.NAME reads
        cls.FIELDS = tuple(out)

    def __init__(self, *args: Any, **kw: Any) -> None:
        if len(args) > len(self.FIELDS):
            raise TypeError(f"{type(self).__name__} takes {len(self.FIELDS)} arguments")
        values = dict(zip((f.name for f in self.FIELDS), args, strict=False))
        for name in kw:
            if name in values or name not in {f.name for f in self.FIELDS}:
                raise TypeError(f"{type(self).__name__}: bad argument {name!r}")
        values.update(kw)
        for f in self.FIELDS:
            if f.name not in values:
                if f.default is MISSING:
                    raise TypeError(f"{type(self).__name__} needs {f.name!r}")
                values[f.name] = f.default
        object.__setattr__(self, "_values", values)

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "_values")[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._values == self._values

    def __hash__(self) -> int:
        return hash((self.op, repr(self._values)))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"{type(self).__name__}({args})"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"op": self.op}
        doc.update({k: v for k, v in self._values.items() if v is not None})
        return doc


class Status(Request[RouterStatus]):
    op = "status"


class Connect(Request[str]):
    """-> the target's canonical address."""

    op = "connect"
    peer: str = _arg(what="address string")


class Forget(Request[str]):
    op = "forget"
    peer: str = _arg(what="address string")


class Allocate(Request[str]):
    """-> "ADDR/PREFIX" in the mesh range (or ``subnet``)."""

    op = "allocate"
    container: str = _arg()
    ns_path: str = _arg(default="")
    subnet: str | None = _arg(default=None)


class Claim(Request[str]):
    op = "claim"
    container: str = _arg()
    cidr: str = _arg(what="address (CIDR) string")
    ns_path: str = _arg(default="")


class Release(Request[list[str]]):
    """-> the released addresses (only ``addrs``, when given)."""

    op = "release"
    container: str = _arg()
    addrs: list[str] | None = _arg(default=None)


class Holder(Request[str | None]):
    """-> the container of this host holding ``address``, or None."""

    op = "holder"
    address: str = _arg()


class PasswordRotate(Request[str]):
    op = "password_rotate"
    password: str = _arg(what='string (and a numeric "window")', empty=True)
    window: float | None = _arg(default=None)


class Revoke(Request[str]):
    op = "revoke"
    revocation: str = _arg(what="string (a MESH REVOCATION block)")


class PasswordRetire(Request[str]):
    op = "password_retire"


class CertRenew(Request[str]):
    op = "cert_renew"
    cert: str = _arg(what="string (a MESH CERTIFICATE block)")
    key: str = _arg(what="string (a MESH PRIVATE KEY block)")
    ca: str = _arg(what="string (MESH CERTIFICATE blocks)", empty=True)


class Ipam(Request[IpamStatus]):
    op = "ipam"


class Rmpeer(Request[str]):
    op = "rmpeer"
    peer: str = _arg(what="name")


class Ping(Request[PingResult]):
    op = "ping"
    peer: str = _arg(what="name")
    count: int = _arg(default=3, low=1, high=100, bad="must be a number from 1 to 100")
    interval: float = _arg(default=0.2, low=0.01, high=10, bad="must be from 0.01 to 10 seconds")


class Dns(Request[DnsStatus]):
    op = "dns"


class DnsAdd(Request[int]):
    """-> how many entries are new."""

    op = "dns_add"
    container: str = _arg()
    names: list[str] = _arg()
    addrs: list[str] = _arg()


class DnsRemove(Request[int]):
    """-> how many entries went."""

    op = "dns_remove"
    container: str = _arg()
    name: str | None = _arg(default=None)
    addr: str | None = _arg(default=None)


class DnsLookup(Request[list[str]]):
    op = "dns_lookup"
    name: str = _arg()


class Expose(Request[str]):
    """-> "ADDR/PREFIX, ..." (the host's addresses on the mesh)."""

    op = "expose"
    cidr: str | None = _arg(default=None)
    masquerade: bool = _arg(default=True)
    fqdn: str | None = _arg(default=None)


class Hide(Request[str]):
    op = "hide"


class Reset(Request[str]):
    """-> a sentence; the router then stops."""

    op = "reset"


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
        Revoke,
        CertRenew,
        PasswordRetire,
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
    args = {f.name: _value(cls.op, f, doc.get(f.name)) for f in cls.FIELDS}
    return cls(**args)


def _value(op: str, f: Arg, value: Any) -> Any:
    kind = str(f.type)
    optional = kind.endswith("| None")
    if value is None or (value == "" and not f.metadata.get("empty")):
        if optional:
            return None
        if f.default is not MISSING:
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
