"""``mesh router``: run the router in the foreground until stopped."""

from __future__ import annotations

import datetime
import errno
import json
import logging
import logging.handlers
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import trio

from meshrouter.base.constants import LISTEN_ALL
from meshrouter.base.errors import MeshError
from meshrouter.contract.apiclient import socket_path
from meshrouter.contract.certfiles import launch_credentials
from meshrouter.contract.config import RouterOptions
from meshrouter.contract.state import (
    current_netns_name,
    mark_bridge_made,
    password_from_env,
    peer_name,
    read_password,
)
from meshrouter.daemon import api, metrics
from meshrouter.daemon.persist import StateFiles
from meshrouter.daemon.router import Router
from meshrouter.engines import probe
from meshrouter.engines import watcher as engine
from meshrouter.engines.pluginservice import PluginService
from meshrouter.host.netdev import delete_bridge_made, ensure_bridge
from meshrouter.proto.handshake import derive_psk

log = logging.getLogger("meshrouter")


_RECORD_KEYS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
LOG_ROTATE_BYTES = 10 << 20
LOG_KEEP = 3


def _timestamp(created: float) -> str:
    """ISO 8601 with milliseconds and the local UTC offset: 2026-12-01T21:41:17.042+00:00."""
    t = datetime.datetime.fromtimestamp(created).astimezone()
    return t.isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (milliseconds, time zone), level,
    logger, message, pid, the record's own fields (``extra=``) and the
    exception, if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_KEYS and not key.startswith("_"):
                out[key] = value if isinstance(value, int | float | str | bool) else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


class TextFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _timestamp(record.created)


def setup_logging(level: str, fmt: str = "text", log_file: str = "") -> None:
    """Log to stderr, or to ``log_file`` (rotated) with errors on stderr too
    (what 'mesh launch' reports when the router stops during start-up)."""
    formatter: logging.Formatter = (
        JsonFormatter()
        if fmt == "json"
        else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handlers: list[logging.Handler] = []
    main: logging.Handler
    if log_file:
        main = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=LOG_ROTATE_BYTES, backupCount=LOG_KEEP
        )
        errors = logging.StreamHandler(sys.stderr)
        errors.setLevel(logging.ERROR)
        errors.setFormatter(logging.Formatter("%(message)s"))
        handlers += [main, errors]
    else:
        main = logging.StreamHandler(sys.stderr)
        handlers.append(main)
    main.setFormatter(formatter)
    close_logging()
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(getattr(logging, level.upper()))


def close_logging() -> None:
    """Close and drop the root logger's handlers (the log file with them)."""
    root = logging.getLogger()
    for handler in root.handlers:
        handler.close()
    root.handlers[:] = []


async def _main(router: Router, opts: RouterOptions, state_dir: Path) -> None:
    def persist() -> None:
        router.files.save_targets(router.target_addresses())

    async with trio.open_nursery() as nursery:
        await nursery.start(router.run)
        persist()
        await nursery.start(api.serve, router.commands, socket_path(state_dir), persist)
        if router.containers is not None:
            c = router.containers
            nursery.start_soon(engine.watch, c.started, c.catch_up, c.destroyed)
            if probe.podman_available():
                nursery.start_soon(c.follow_podman)
        plugin_path = (
            Path(opts.docker_plugin)
            if opts.docker_plugin and not probe.engines_disabled()
            else None
        )
        if plugin_path is not None and plugin_path.parent.parent.is_dir():
            dns = opts.dns_listen_address if opts.dns else None
            service = PluginService(
                router.commands, opts.ipalloc_range, opts.bridge, opts.mtu, dns, router.boundary
            )
            try:
                await nursery.start(service.serve, plugin_path)
            except OSError as exc:
                log.warning("no Docker network driver: cannot serve %s: %s", plugin_path, exc)
        if opts.metrics_addr:
            host, _, port = opts.metrics_addr.rpartition(":")
            try:
                await nursery.start(
                    metrics.serve, router.status, host.strip("[]"), int(port), router.boundary
                )
                log.info("metrics on http://%s/metrics", opts.metrics_addr)
            except OSError as exc:
                log.warning("no metrics: cannot listen on %s: %s", opts.metrics_addr, exc)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

            async def on_signal() -> None:
                async for signum in signals:
                    log.info("received %s", signal.Signals(signum).name)
                    router.stop_requested.set()

            nursery.start_soon(on_signal)
            await router.stop_requested.wait()
            log.info("stopping")
            await router.shutdown()
            nursery.cancel_scope.cancel()


def run(opts: RouterOptions, state_dir: Path) -> int:
    """Run the router in the foreground until SIGTERM/SIGINT or 'mesh stop'."""
    try:
        setup_logging(opts.log_level, opts.log_format, opts.log_file)
    except OSError as exc:
        print(f"cannot start router: cannot write the log {opts.log_file}: {exc}", file=sys.stderr)
        return 1
    os.chdir("/")  # nothing of the working directory is ours (paths are absolute)
    made_bridge = False
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        creds = launch_credentials(opts.cert, opts.key, opts.ca, opts.nickname, time.time())
        # With a certificate the password is optional: given too, both are
        # accepted (a mesh moving to certificates host by host).
        psk = None
        if creds is None or opts.password_file or password_from_env():
            psk = derive_psk(read_password(opts.password_file))
        if ensure_bridge(opts.bridge, opts.mtu):
            made_bridge = True
            mark_bridge_made(state_dir, opts.bridge)
        # Who runs the router (also when a service manager or a Kubernetes pod
        # started it, not 'mesh launch'): 'mesh stop' and the CNI shim read it.
        StateFiles(state_dir).write_pid()
        router = Router(
            opts,
            name=creds.cert.name if creds is not None else peer_name(state_dir),
            psk=psk,
            creds=creds,
            nickname=(
                creds.cert.nickname
                if creds is not None
                else opts.nickname or current_netns_name() or socket.gethostname()
            ),
            state_dir=state_dir,
            peers=list(dict.fromkeys(StateFiles(state_dir).load_targets() + opts.peers)),
        )
    except (ValueError, MeshError, OSError) as exc:
        log.error("cannot start router: %s", exc)
        _undo_bridge(state_dir, opts.bridge, made_bridge)
        return 1
    try:
        trio.run(_main, router, opts, state_dir)
    except Exception as exc:  # trio hands what ended it over in an ExceptionGroup
        leaves = list(_leaves(exc))
        for leaf in leaves:
            if isinstance(leaf, OSError | MeshError | ValueError):
                log.error("router failed: %s", describe(leaf, opts))
            else:
                log.error("router failed: %s: %s", type(leaf).__name__, leaf, exc_info=leaf)
        if not router.serving:  # it never listened: leave nothing behind
            _undo_bridge(state_dir, opts.bridge, made_bridge)
        return 1
    return 0


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            yield from _leaves(e)
    else:
        yield exc


def describe(exc: BaseException, opts: RouterOptions) -> str:
    """One line for an error that ended the router."""
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        where = "every address (IPv4 or IPv6)" if opts.listen in LISTEN_ALL else opts.listen
        return (
            f"port {opts.port} on {where} is in use (another router?): "
            "stop it or choose another --port"
        )
    if isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
        return f"--listen {opts.listen} is not an address of this host"
    return str(exc) or type(exc).__name__


def _undo_bridge(state_dir: Path, bridge: str, made: bool) -> None:
    if made:  # this run made it: a start that failed leaves none behind
        delete_bridge_made(state_dir, bridge)
