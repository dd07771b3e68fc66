"""The Docker Engine API over its unix socket, for where no ``docker`` command
is installed (the router image): the engine's version, a container by name
or id, and the stream of container events.  Blocking (``http.client``); the
router calls it from a thread.  The socket is ``DOCKER_HOST`` (unix://
only) or ``/var/run/docker.sock``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from collections.abc import Iterator
from typing import Any

DEFAULT_SOCKET = "/var/run/docker.sock"
API = "/v1.41"  # Docker 20.10; newer engines answer it too


class DockerApiError(Exception):
    """The engine could not be reached, or said no: a one-line reason."""


def socket_path() -> str | None:
    host = os.environ.get("DOCKER_HOST", f"unix://{DEFAULT_SOCKET}")
    return host.removeprefix("unix://") if host.startswith("unix://") else None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("docker", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _open(path: str, timeout: float | None) -> tuple[_UnixConnection, http.client.HTTPResponse]:
    sock = socket_path()
    if sock is None:
        raise DockerApiError("DOCKER_HOST is not a unix socket")
    conn = _UnixConnection(sock, timeout)
    try:
        conn.request("GET", API + path)
        return conn, conn.getresponse()
    except OSError as exc:
        conn.close()
        raise DockerApiError(f"no Docker engine at {sock}: {exc.strerror or exc}") from None


def get(path: str, timeout: float = 10.0) -> tuple[int, Any]:
    """(HTTP status, the JSON body) of GET ``path``."""
    conn, resp = _open(path, timeout)
    try:
        body = resp.read()
    except OSError as exc:
        raise DockerApiError(f"the Docker engine did not answer: {exc}") from None
    finally:
        conn.close()
    try:
        return resp.status, json.loads(body) if body else None
    except ValueError:
        raise DockerApiError(f"the Docker engine answered {path} with no JSON") from None


def available() -> bool:
    try:
        status, doc = get("/version", timeout=5.0)
    except DockerApiError:
        return False
    return status == 200 and isinstance(doc, dict) and bool(doc.get("Version"))


def inspect(name: str) -> dict[str, Any] | None:
    """The container ``name`` (name, short or full id), or None if unknown."""
    status, doc = get(f"/containers/{urllib.parse.quote(name, safe='')}/json")
    if status == 404:
        return None
    if status != 200 or not isinstance(doc, dict):
        msg = doc.get("message") if isinstance(doc, dict) else None
        raise DockerApiError(f"docker inspect {name}: {msg or f'HTTP {status}'}")
    return doc


def events(**filters: list[str]) -> Iterator[dict[str, Any]]:
    """Events from now on, one dict each, until the engine closes the stream."""
    query = urllib.parse.urlencode({"filters": json.dumps(filters)})
    conn, resp = _open(f"/events?{query}", None)
    try:
        if resp.status != 200:
            raise DockerApiError(f"docker events: HTTP {resp.status}")
        while line := resp.readline():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                yield event
    except OSError as exc:
        raise DockerApiError(f"docker events ended: {exc}") from None
    finally:
        conn.close()
