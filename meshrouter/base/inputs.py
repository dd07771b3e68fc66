"""Checks for what operators and local clients type or send, made where it enters.

Everything here raises ``BadInput`` (a ``ValueError``) with one line naming
what was wrong, and nothing else: a JSON body nested too deep or too large, a
host name that no resolver could take (``node1..example.com``, a 64-character
label).  It imports nothing heavy: the client loads it.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from meshrouter.base.errors import BadInput

MAX_JSON_DEPTH = 32  # far deeper than any request of ours; json's C decoder recurses
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def json_untrusted(data: bytes | str, *, what: str, max_bytes: int) -> Any:
    """Parse JSON from a client (``what`` names it in the error), bounded in
    size and nesting depth.  Raises BadInput only."""
    if len(data) > max_bytes:
        raise BadInput(f"{what}: larger than {max_bytes} bytes")
    try:
        text = data.decode() if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise BadInput(f"{what}: not UTF-8") from None
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRINGS.sub("", text)):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_JSON_DEPTH:
        raise BadInput(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except RecursionError:  # unreachable after the depth check, but never fatal
        raise BadInput(f"{what}: JSON nested too deep") from None
    except ValueError as exc:
        raise BadInput(f"{what}: not JSON ({exc})") from None


def check_host(host: str) -> str:
    """``host`` if it is an IP address or a DNS name a resolver can take
    (labels of 1-63 letters, digits, '-' or '_', not starting or ending with
    '-'; at most 253 characters).  Raises BadInput saying what is wrong."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    name = host[:-1] if host.endswith(".") else host
    if not name:
        raise BadInput("empty host name")
    if len(name) > 253:
        raise BadInput(f"host name {host[:40]!r}...: longer than 253 characters")
    for label in name.split("."):
        if not label:
            raise BadInput(f"host name {host!r} has an empty label (two dots in a row?)")
        if len(label) > 63:
            raise BadInput(f"host name {host!r}: the label {label[:20]!r}... is over 63 characters")
        if not _LABEL.match(label):
            raise BadInput(
                f"host name {host!r}: {label!r} is not a DNS label "
                "(letters, digits and '-', not at either end)"
            )
    return host


def split_address(text: str, default_port: int) -> tuple[str, int]:
    """Parse ``host``, ``host:port`` or ``[v6]:port``.  Raises BadInput (a
    ValueError) with a clear reason: also for a host name no resolver takes."""
    text = text.strip()
    if not text:
        raise BadInput("empty peer address")
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BadInput(f"peer address {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise BadInput(f"peer address {text!r}: expected ':port' after ']'")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(p, text)
    try:
        check_host(host)
    except BadInput as exc:
        raise BadInput(f"peer address {text!r}: {exc}") from None
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise BadInput(f"peer address {whole!r}: port must be a number from 1 to 65535")
    return int(text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
