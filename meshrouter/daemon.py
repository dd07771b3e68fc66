"""``mesh router``: run the router in the foreground until stopped."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import trio

from . import api, engine, metrics
from .apiclient import socket_path
from .config import RouterOptions
from .errors import MeshError
from .handshake import derive_psk
from .netdev import ensure_bridge
from .pluginservice import PluginService
from .router import Router
from .state import (
    atomic_write,
    current_netns_name,
    load_targets,
    mark_bridge_made,
    peer_name,
    read_password,
    save_targets,
)

log = logging.getLogger("meshrouter")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))


async def _main(router: Router, opts: RouterOptions, state_dir: Path) -> None:
    def persist() -> None:
        save_targets(state_dir, router.target_addresses())

    async with trio.open_nursery() as nursery:
        await nursery.start(router.run)
        persist()
        await nursery.start(api.serve, router, socket_path(state_dir), persist)
        nursery.start_soon(engine.watch, state_dir)
        plugin_path = (
            Path(opts.docker_plugin)
            if opts.docker_plugin and not os.environ.get("MESH_NO_DOCKER")
            else None
        )
        if plugin_path is not None and plugin_path.parent.parent.is_dir():
            dns = opts.dns_listen_address if opts.dns else None
            service = PluginService(router, opts.ipalloc_range, opts.bridge, opts.mtu, dns)
            try:
                await nursery.start(service.serve, plugin_path)
            except OSError as exc:
                log.warning("no Docker network driver: cannot serve %s: %s", plugin_path, exc)
        if opts.metrics_addr:
            host, _, port = opts.metrics_addr.rpartition(":")
            try:
                await nursery.start(metrics.serve, router.status, host.strip("[]"), int(port))
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
    setup_logging(opts.log_level, opts.log_format)
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        psk = derive_psk(read_password(opts.password_file))
        if ensure_bridge(opts.bridge, opts.mtu):
            mark_bridge_made(state_dir, opts.bridge)
        # Who runs the router (also when a service manager or a Kubernetes pod
        # started it, not 'mesh launch'): 'mesh stop' and the CNI shim read it.
        atomic_write(state_dir / "router.pid", f"{os.getpid()}\n".encode(), 0o644)
        router = Router(
            opts,
            name=peer_name(state_dir),
            psk=psk,
            nickname=opts.nickname or current_netns_name() or socket.gethostname(),
            state_dir=state_dir,
            peers=list(dict.fromkeys(load_targets(state_dir) + opts.peers)),
        )
    except (ValueError, MeshError, OSError) as exc:
        log.error("cannot start router: %s", exc)
        return 1
    try:
        trio.run(_main, router, opts, state_dir)
    except (OSError, MeshError) as exc:
        log.error("router failed: %s", exc)
        return 1
    return 0
