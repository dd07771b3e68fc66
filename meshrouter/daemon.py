"""``mesh router``: run the router in the foreground until stopped."""

from __future__ import annotations

import json
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import trio

from . import api, metrics
from .constants import CONTAINER_MTU, PORT
from .errors import MeshError
from .handshake import derive_psk
from .netdev import ensure_bridge
from .router import Router, RouterConfig
from .state import load_targets, peer_name, read_password, save_targets

log = logging.getLogger("meshrouter")


@dataclass
class DaemonOptions:
    state_dir: Path
    password_file: str | None
    peers: list[str]
    nickname: str
    bridge: str = "mesh"
    tap: str = "meshtap"
    port: int = PORT
    listen: str = "0.0.0.0"
    ipalloc_range: str = "10.32.0.0/12"
    mtu: int = CONTAINER_MTU
    log_level: str = "info"
    offload: bool = True
    busy_poll_us: int = 0
    ipalloc_init: int = 0
    metrics_addr: str = "127.0.0.1:6782"
    log_format: str = "text"
    conn_limit: int = 100


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


async def _main(router: Router, opts: DaemonOptions) -> None:
    def persist() -> None:
        save_targets(opts.state_dir, [t.address for t in router.targets])

    async with trio.open_nursery() as nursery:
        await nursery.start(router.run)
        persist()
        await nursery.start(api.serve, router, opts.state_dir / "router.sock", persist)
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


def run(opts: DaemonOptions) -> int:
    setup_logging(opts.log_level, opts.log_format)
    try:
        opts.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        psk = derive_psk(read_password(opts.password_file))
        ensure_bridge(opts.bridge, opts.mtu)
        peers = list(dict.fromkeys(load_targets(opts.state_dir) + opts.peers))
        config = RouterConfig(
            name=peer_name(opts.state_dir),
            nickname=opts.nickname,
            psk=psk,
            bridge=opts.bridge,
            tap_name=opts.tap,
            listen_host=opts.listen,
            port=opts.port,
            peers=peers,
            ipalloc_range=opts.ipalloc_range,
            mtu=opts.mtu,
            offload=opts.offload,
            state_dir=opts.state_dir,
            ipalloc_init=opts.ipalloc_init,
            conn_limit=opts.conn_limit,
            busy_poll=opts.busy_poll_us / 1e6,
        )
        router = Router(config)
    except (ValueError, MeshError, OSError) as exc:
        log.error("cannot start router: %s", exc)
        return 1
    try:
        trio.run(_main, router, opts)
    except OSError as exc:
        log.error("router failed: %s", exc)
        return 1
    except MeshError as exc:
        log.error("router failed: %s", exc)
        return 1
    return 0
