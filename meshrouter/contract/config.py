"""The router's options, written once: the CLI's flags, the daemon's arguments and the
router's configuration are all made from the fields of ``RouterOptions``.

Each field's metadata holds its help text and, where needed, ``flag`` (the
option's name when it is not ``--field-name``), ``metavar``, ``choices``,
``launch_only`` (read by ``mesh launch`` itself, not passed to the router),
``positional`` and ``check`` (a number's allowed range, ``(low, high)``).  A
``bool`` field whose default is True becomes a ``--no-...`` switch.

The same table reads a configuration file (``--config FILE``, TOML): its keys
are the options' names (``password-file``, ``port``, ``dns = false``,
``peers = [...]``), its values checked as the flags are; flags given on the
command line win.  This module imports nothing heavy: the client loads it on
every command.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshrouter.base.constants import CONTAINER_MTU, DNS_ADDRESS, PORT
from meshrouter.base.errors import BadInput

DEFAULT_RANGE = "10.32.0.0/12"
DEFAULT_BUSY_POLL_US = 0


def _opt(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class RouterOptions:
    password_file: str | None = _opt(
        None,
        "file holding the mesh password, the same on every host (or set MESH_PASSWORD); "
        "not needed with --cert (given with it, both are accepted)",
        metavar="FILE",
    )
    cert: str | None = _opt(
        None,
        "this host's certificate ('mesh ca sign' makes it, with --key): the host joins by "
        "it, with no password, under the name and nickname it names",
        metavar="FILE",
    )
    key: str | None = _opt(None, "the private key of --cert (mode 600)", metavar="FILE")
    ca: str | None = _opt(
        None, "the mesh CA's certificate (ca.crt of 'mesh ca init'), for --cert", metavar="FILE"
    )
    bridge: str = _opt("mesh", "bridge name (default: %(default)s)")
    tap: str = _opt(
        "meshtap", "name of the router's TAP device on the bridge (default: %(default)s)"
    )
    port: int = _opt(PORT, "TCP and UDP port (default: %(default)s)", check=(1, 65535))
    listen: str = _opt(
        "::",
        "address to listen on: '::' (the default) is every address of both families "
        "(IPv4 alone where the kernel has no IPv6), 0.0.0.0 every IPv4 one, or one "
        "address of this host's",
        metavar="ADDR",
    )
    nickname: str | None = _opt(None, "human name of this peer (default: netns or host name)")
    ipalloc_range: str = _opt(
        DEFAULT_RANGE, "address range of the mesh (default: %(default)s)", metavar="CIDR"
    )
    ipalloc_range6: str = _opt(
        "",
        "IPv6 range beside --ipalloc-range, like fd32::/64 (default: none, containers "
        "get IPv4 only): a container's IPv6 address is the one at the offset of its "
        "IPv4 address in the range (10.32.0.5 -> fd32::5), so one IPAM decides both; "
        "the same on every peer",
        metavar="CIDR6",
    )
    ipalloc_init: int = _opt(
        0,
        "how many peers the mesh starts with; addresses are handed out once "
        "N/2+1 of them are connected (default: the PEERs given + 1)",
        metavar="N",
        check=(0, 100000),
    )
    reclaim_after: int = _opt(
        1800,
        "take over the address share of a peer unreachable this many seconds, by "
        "agreement of a majority of the owners of the range (0: never, only "
        "'mesh rmpeer'; default: %(default)s)",
        metavar="SECONDS",
        check=(0, 10**9),
    )
    ipalloc_default_subnet: str | None = _opt(
        None,
        "subnet of the range that 'mesh attach CONTAINER' allocates from "
        "(default: the whole range)",
        metavar="CIDR",
        launch_only=True,
    )
    mtu: int = _opt(
        CONTAINER_MTU,
        "container MTU, 576 to 9000 (default: %(default)s, what the tunnel carries)",
        check=(576, 9000),
    )
    log_level: str = _opt(
        "info", "log level (default: %(default)s)", choices=("debug", "info", "warning", "error")
    )
    log_format: str = _opt(
        "text",
        "log line format: text, or json (one object a line: time with milliseconds and "
        "time zone, level, logger, message, pid and the record's fields; default: %(default)s)",
        choices=("text", "json"),
    )
    log_file: str = _opt(
        "",
        "write the log to FILE, rotated at 10 MiB with 3 old files kept (FILE.1 ...); "
        "errors go to stderr too (default: stderr only; 'mesh launch': "
        "STATE_DIR/router.log)",
        metavar="FILE",
    )
    metrics_addr: str = _opt(
        "127.0.0.1:6782",
        "serve Prometheus metrics at http://HOST:PORT/metrics "
        "(default: %(default)s; empty to turn off)",
        metavar="HOST:PORT",
    )
    conn_limit: int = _opt(
        100,
        "most control connections at once, handshakes included; below the number of "
        "peers, each router keeps this many and the rest are relayed (default: %(default)s)",
        metavar="N",
        check=(1, 100000),
    )
    relay: str = _opt(
        "yes",
        "whether this router carries traffic and control messages between peers that "
        "have no direct path: 'yes' (the default), 'no' (never: routes go around it, "
        "and a peer reached only through it is not reached) or 'prefer' (chosen first "
        "among equally short paths, as a well-connected public host)",
        choices=("yes", "no", "prefer"),
    )
    nat_public: str = _opt(
        "",
        "this host's public address(es) on a NAT that forwards TCP and UDP --port to it, "
        "ADDR[:PORT],... (port default: --port): peers dial it there, as if it had no "
        "NAT, instead of punching to it (default: none)",
        metavar="ADDR[:PORT],...",
    )
    trusted_subnets: str = _opt(
        "",
        "comma-separated CIDRs of underlay networks trusted to carry data unencrypted: "
        "a connection to a peer at such an address (that trusts us too) moves its "
        "unicast frames to the kernel's VXLAN (UDP port 6784), switching back to the "
        "encrypted path while that fails; IPv4 or IPv6 ones, not both (default: none)",
        metavar="CIDR,...",
    )
    busy_poll_us: int = _opt(
        DEFAULT_BUSY_POLL_US,
        "after forwarding, keep polling this many microseconds before sleeping "
        "(lower latency, some CPU; 0 turns it off; default: %(default)s)",
        metavar="US",
        check=(0, 1000000),
    )
    dataplane: str = _opt(
        "auto",
        "which loop forwards encrypted frames: 'c' (the compiled per-message loop), "
        "'python' (the pure-Python forwarder) or 'auto' (C when it was built; "
        "default: %(default)s)",
        choices=("auto", "c", "python"),
    )
    offload: bool = _opt(
        True,
        "turn off TAP segmentation/checksum offload and UDP GSO/GRO "
        "(slower; for kernels or paths that mishandle them)",
    )
    dns: bool = _opt(True, "serve no DNS for containers (names of attached containers, mesh-wide)")
    dns_domain: str = _opt(
        "mesh.local.", "domain of container names (default: %(default)s)", metavar="DOMAIN"
    )
    dns_listen_address: str = _opt(
        DNS_ADDRESS,
        "address of the DNS server, put on the bridge; containers get a route to it "
        "(default: %(default)s, link-local, the same on every host, kept off the mesh)",
        metavar="ADDR",
    )
    dns_ttl: int = _opt(
        1, "TTL of DNS answers for mesh names, seconds (default: %(default)s)", check=(0, 86400)
    )
    dns_upstream: str = _opt(
        "",
        "resolvers for names outside the mesh, ADDR[:PORT],... "
        "(default: the nameservers of /etc/resolv.conf)",
        metavar="LIST",
    )
    docker_plugin: str = _opt(
        "/run/docker/plugins/mesh.sock",
        "serve Docker's network and IPAM driver 'mesh' on this unix socket "
        "('docker network create -d mesh --ipam-driver mesh NAME'), when the directory "
        "above its directory exists (a Docker engine's /run/docker); empty: do not "
        "(default: %(default)s)",
        metavar="PATH",
    )
    peers: list[str] = field(
        default_factory=list,
        metadata={
            "help": "peers to connect to: HOST or HOST:PORT",
            "metavar": "PEER",
            "positional": True,
        },
    )


OPTIONS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(RouterOptions)


def _flag(f: dataclasses.Field[Any]) -> str:
    if f.type == "bool" and f.default is True:
        return "--no-" + f.name.replace("_", "-")
    return str(f.metadata.get("flag", "--" + f.name.replace("_", "-")))


def check_value(f: dataclasses.Field[Any], value: Any) -> Any:
    """``value`` for option ``f`` if it is of the option's type and range.
    Raises BadInput naming the option and what it takes."""
    flag = _flag(f) if f.type != "bool" else f.name.replace("_", "-")
    if f.type == "bool":
        if not isinstance(value, bool):
            raise BadInput(f"{flag}: expected true or false, not {value!r}")
        return value
    if f.type == "int":
        if isinstance(value, str):
            try:
                value = int(value, 10)
            except ValueError:
                raise BadInput(f"{flag}: {value!r} is not a whole number") from None
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadInput(f"{flag}: expected a whole number, not {value!r}")
        low, high = f.metadata.get("check", (-(2**63), 2**63))
        if not low <= value <= high:
            raise BadInput(f"{flag} {value}: must be from {low} to {high}")
        return value
    if f.metadata.get("positional"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadInput(f"{f.name}: expected a list of strings")
        return list(value)
    if not isinstance(value, str):
        raise BadInput(f"{flag}: expected a string, not {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise BadInput(f"{flag}: {value!r} is not one of {', '.join(choices)}")
    return value


def _argparse_type(f: dataclasses.Field[Any]) -> Any:
    def convert(text: str) -> Any:
        try:
            return check_value(f, text)
        except BadInput as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None

    convert.__name__ = "number" if f.type == "int" else "string"
    return convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every router option to ``parser`` (dest = the field's name)."""
    for f in OPTIONS:
        meta = f.metadata
        kw: dict[str, Any] = {"help": meta["help"]}
        if meta.get("positional"):
            parser.add_argument(f.name, nargs="*", metavar=meta.get("metavar"), **kw)
            continue
        if f.type == "bool":
            kw["action"] = "store_false" if f.default else "store_true"
        else:
            kw["type"] = _argparse_type(f) if f.type == "int" else str
            kw["default"] = f.default
            if "metavar" in meta:
                kw["metavar"] = meta["metavar"]
            if "choices" in meta:
                kw["choices"] = meta["choices"]
        parser.add_argument(_flag(f), dest=f.name, **kw)


MAX_CONFIG = 256 * 1024


def read_config(path: str) -> dict[str, Any]:
    """The options a configuration file sets, by field name, checked as the
    flags are.  Raises BadInput with one line naming the file and the key."""
    import tomllib  # only when a file is given

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadInput(f"config file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG:
        raise BadInput(f"config file {path}: larger than {MAX_CONFIG} bytes")
    try:
        doc = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(f"config file {path}: not TOML ({exc})") from None
    by_name = {f.name: f for f in OPTIONS}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = key.replace("-", "_")
        f = by_name.get(name)
        if f is None:
            known = ", ".join(sorted(n.replace("_", "-") for n in by_name))
            raise BadInput(f"config file {path}: unknown key {key!r} (known: {known})")
        try:
            out[name] = check_value(f, value)
        except BadInput as exc:
            raise BadInput(f"config file {path}: {exc}") from None
    return out


def from_namespace(ns: argparse.Namespace) -> RouterOptions:
    return RouterOptions(**{f.name: getattr(ns, f.name) for f in OPTIONS})


def to_argv(opts: RouterOptions) -> list[str]:
    """The arguments that make ``mesh router`` run with ``opts`` (launch-only options left out)."""
    argv: list[str] = []
    positional: list[str] = []
    for f in OPTIONS:
        meta, value = f.metadata, getattr(opts, f.name)
        if meta.get("launch_only"):
            continue
        if meta.get("positional"):
            positional += value
        elif f.type == "bool":
            if value != f.default:
                argv.append(_flag(f))
        elif value is not None:
            argv += [_flag(f), str(value)]
    return argv + positional


MAX_PUBLIC = 4


def parse_public(text: str, port: int) -> tuple[str, ...]:
    """``--nat-public``: ``ADDR[:PORT],...`` as canonical ``host:port``
    (IP addresses only: the mesh gossips it, and a peer dials it as written).
    Raises BadInput (a ValueError) naming the bad one and what it takes."""
    from meshrouter.base.inputs import format_address, split_address

    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        hint = "an IP address with an optional port, like 198.51.100.7:6783 or [2001:db8::7]:6783"
        try:
            host, p = split_address(part, port)
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise BadInput(f"--nat-public {part!r}: expected {hint}") from None
        if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_link_local:
            raise BadInput(
                f"--nat-public {part!r}: not an address peers could dial; expected {hint}"
            )
        addr = format_address(ip.compressed, p)
        if addr not in out:
            out.append(addr)
    if len(out) > MAX_PUBLIC:
        raise BadInput(f"--nat-public: at most {MAX_PUBLIC} addresses, not {len(out)}")
    return tuple(out)


def parse_subnets(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``--trusted-subnets`` (comma-separated CIDRs of one family: the kernel
    path's VXLAN device carries one); raises ValueError naming the bad one."""
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise ValueError(f"--trusted-subnets: {part!r} is not a CIDR ({exc})") from None
    if len({n.version for n in nets}) > 1:
        raise ValueError(
            "--trusted-subnets: give subnets of one family, IPv4 or IPv6 (the kernel "
            "path's VXLAN device carries one); the other family's peers use the "
            "encrypted path"
        )
    return nets
