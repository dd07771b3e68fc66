"""The router's state directory: where it lives, atomic writes, persisted identity and targets."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from meshrouter.base.names import format_name, parse_name


def _warn(msg: str, *args: object) -> None:
    import logging  # only when there is something to say: the client loads this module

    logging.getLogger("meshrouter").warning(msg, *args)


BASE_STATE_DIR = Path("/var/lib/meshrouter")


def current_netns_name() -> str | None:
    """The ``ip netns`` name of the namespace we run in, if it has one."""
    try:
        mine = os.stat("/proc/self/ns/net")
        for entry in os.scandir("/run/netns"):
            with contextlib.suppress(OSError):
                st = os.stat(entry.path)
                if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                    return entry.name
    except OSError:
        pass
    return None


def default_state_dir() -> Path:
    """``$MESH_STATE_DIR``, else /var/lib/meshrouter, or a subfolder per named netns.

    Several "hosts" on one machine are usually network namespaces; each gets
    its own state without the operator having to say so.
    """
    env = os.environ.get("MESH_STATE_DIR")
    if env:
        return Path(env)
    ns = current_netns_name()
    return BASE_STATE_DIR / f"netns-{ns}" if ns else BASE_STATE_DIR


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` so that a crash leaves either the old or the new file.

    A failure (a full disk, a read-only directory) leaves the old file as it
    was and no temporary file behind, and raises OSError with one line that
    names the file and its directory."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:  # a short write is not an error: write the rest
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(
            exc.errno,
            f"cannot write {path.name} in {path.parent}: {exc.strerror or exc} "
            "(is the state directory full or read-only?); the previous copy is unchanged",
        ) from None
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_json(path: Path, default: Any) -> Any:
    """The JSON in ``path``, or ``default`` when there is none.  A file that
    is no JSON (truncated, overwritten, a bad disk) is moved aside to
    ``NAME.corrupt`` with a warning that names both, so that what it held is
    not lost to the next save; one that cannot be read is left where it is."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except ValueError as exc:  # UnicodeDecodeError too
        aside = path.with_name(path.name + ".corrupt")
        try:
            os.replace(path, aside)
        except OSError as move:
            _warn("ignoring unreadable %s (%s); could not move it aside: %s", path, exc, move)
        else:
            _warn("%s was unreadable (%s): kept as %s, starting from nothing", path, exc, aside)
        return default
    except OSError as exc:
        _warn("ignoring unreadable %s: %s", path, exc)
        return default


def peer_name(state_dir: Path) -> bytes:
    """This host's peer name, made once (a locally administered MAC) and kept."""
    path = state_dir / "peer-name"
    with contextlib.suppress(FileNotFoundError, ValueError):
        return parse_name(path.read_text().strip())
    import secrets  # only when a peer name is made

    raw = bytearray(secrets.token_bytes(6))
    raw[0] = (raw[0] & 0xFC) | 0x02  # unicast, locally administered
    name = bytes(raw)
    atomic_write(path, (format_name(name) + "\n").encode(), 0o644)
    return name


def password_from_env() -> str:
    """``$MESH_PASSWORD`` (the one reader of it), or ""."""
    return os.environ.get("MESH_PASSWORD", "")


def read_password(path: str | None) -> bytes:
    """The mesh password from a file (or $MESH_PASSWORD).  Raises ValueError with a reason."""
    if path is None:
        env = password_from_env()
        if env:
            return env.encode()
        raise ValueError(
            "no mesh password: pass --password-file FILE (or set MESH_PASSWORD); "
            "every peer of the mesh must use the same one"
        )
    try:
        st = os.stat(path)
        data = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"cannot read password file {path}: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        _warn(
            "password file %s is readable by group or others (mode %o); run chmod 600 %s",
            path,
            st.st_mode & 0o777,
            path,
        )
    if not data:
        raise ValueError(f"password file {path} is empty")
    return data


BRIDGE_MADE = "bridge-made"


def mark_bridge_made(state_dir: Path, bridge: str) -> None:
    """Remember that the router made ``bridge``, so that 'mesh stop' may remove it."""
    atomic_write(state_dir / BRIDGE_MADE, bridge.encode(), 0o644)


def take_bridge_made(state_dir: Path, bridge: str) -> bool:
    """Whether the router made ``bridge`` (and forget it): only then may stop remove it."""
    path = state_dir / BRIDGE_MADE
    try:
        made = path.read_text() == bridge
    except OSError:
        return False
    path.unlink(missing_ok=True)
    return made
