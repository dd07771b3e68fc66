"""Docker engine events: a container that was attached and starts again
(``docker restart``, the engine's restart policy, a reboot) gets its place on
the mesh back, with the same address.

This module only notices: it follows ``docker events`` (container starts
and removals;
from the engine's socket where no ``docker`` command is installed) and hands
each started container's id to ``on_start``, which the daemon gives it (the
daemon re-attaches it itself: ``attachments.restart``).  Whenever the stream
is (re)opened, ``on_follow`` catches up with starts nobody heard (the router
or the engine was down).  Without a Docker
engine (or with ``MESH_NO_DOCKER`` set) this does nothing.  If the event
stream ends (the engine restarted), it is opened again after a pause.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Awaitable, Callable

import trio

from meshrouter.engines import dockerapi, probe

log = logging.getLogger("meshrouter.engine")

RETRY = 5.0


async def _engine_answers() -> bool:
    return await trio.to_thread.run_sync(probe.docker_answers)


OnStart = Callable[[str], Awaitable[None]]
OnFollow = Callable[[], Awaitable[None]]


async def watch(
    on_start: OnStart,
    on_follow: OnFollow | None = None,
    on_destroy: OnStart | None = None,
    *,
    task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Follow container starts for as long as this task lives: ``on_start(id)``
    for each (in a task of its own).  Each time the event stream is opened
    (the first time, and after the engine restarted), ``on_follow()`` runs
    too, in a task of its own, a moment later: it catches up with what
    happened while no one was listening (containers started meanwhile).
    ``on_destroy(id)`` for each container removed: its addresses go at once
    (a stopped one keeps them)."""
    if not await _engine_answers():
        task_status.started(False)
        return
    log.info("following Docker events: restarted containers are attached again")
    task_status.started(True)
    handlers = {"start": on_start}
    if on_destroy is not None:
        handlers["destroy"] = on_destroy
    async with trio.open_nursery() as nursery:
        while True:
            if on_follow is not None:
                nursery.start_soon(_later, on_follow)
            try:
                if shutil.which("docker") is None:
                    await _follow_api(handlers, nursery)
                else:
                    await _follow(handlers, nursery)
            except (OSError, dockerapi.DockerApiError) as exc:
                log.warning("docker events failed: %s; trying again in %.0fs", exc, RETRY)
            except Exception:  # whatever the engine sent: the watcher starts again
                log.exception("following docker events failed; trying again in %.0fs", RETRY)
            await trio.sleep(RETRY)


CATCH_UP_DELAY = 1.0  # the event stream is open by then: nothing falls between


async def _later(on_follow: OnFollow) -> None:
    await trio.sleep(CATCH_UP_DELAY)
    try:
        await on_follow()
    except Exception:  # a catch-up that failed is logged; the events go on
        log.exception("catching up with the engine failed")


async def _follow(handlers: dict[str, OnStart], nursery: trio.Nursery) -> None:
    cmd = ["docker", "events", "--filter", "type=container"]
    for action in handlers:
        cmd += ["--filter", f"event={action}"]
    proc = await trio.lowlevel.open_process(
        [*cmd, "--format", "{{.Action}} {{.ID}}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        buf = b""
        async for chunk in proc.stdout:
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                action, _, cid = line.decode(errors="replace").strip().partition(" ")
                handler = handlers.get(action)
                if handler is not None and cid:
                    nursery.start_soon(handler, cid)
    finally:
        with trio.CancelScope(shield=True):
            proc.kill()
            await proc.wait()


async def _follow_api(handlers: dict[str, OnStart], nursery: trio.Nursery) -> None:
    """The same from the engine's socket: a thread reads the event stream."""
    token = trio.lowlevel.current_trio_token()

    def read() -> None:
        for event in dockerapi.events(type=["container"], event=list(handlers)):
            action = str(event.get("status") or event.get("Action") or "")
            cid = str(event.get("id") or (event.get("Actor") or {}).get("ID") or "")
            handler = handlers.get(action)
            if handler is not None and cid:
                trio.from_thread.run_sync(nursery.start_soon, handler, cid, trio_token=token)

    await trio.to_thread.run_sync(read, abandon_on_cancel=True)
