"""Docker engine events: a container that was attached and starts again
(``docker restart``, the engine's restart policy, a reboot) gets its place on
the mesh back, with the same address.

The router only notices: it follows ``docker events`` (container starts; from
the engine's socket where no ``docker`` command is installed) and
for each one runs ``mesh reattach ID``, the client, which knows the
attachment records and does what attach does.  Without a Docker engine (or
with ``MESH_NO_DOCKER`` set) this does nothing.  If the event stream ends
(the engine restarted), it is opened again after a pause.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import trio

from meshrouter.contract.apiclient import client_argv
from meshrouter.engines import dockerapi, probe

log = logging.getLogger("meshrouter.engine")

RETRY = 5.0


async def _engine_answers() -> bool:
    return await trio.to_thread.run_sync(probe.docker_answers)


async def watch(
    state_dir: Path, *, task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED
) -> None:
    """Follow container starts for as long as this task lives."""
    if not await _engine_answers():
        task_status.started(False)
        return
    log.info("following Docker events: restarted containers are attached again")
    task_status.started(True)
    async with trio.open_nursery() as nursery:
        while True:
            try:
                if shutil.which("docker") is None:
                    await _follow_api(state_dir, nursery)
                else:
                    await _follow(state_dir, nursery)
            except (OSError, dockerapi.DockerApiError) as exc:
                log.warning("docker events failed: %s; trying again in %.0fs", exc, RETRY)
            except Exception:  # whatever the engine sent: the watcher starts again
                log.exception("following docker events failed; trying again in %.0fs", RETRY)
            await trio.sleep(RETRY)


async def _follow(state_dir: Path, nursery: trio.Nursery) -> None:
    cmd = ["docker", "events", "--filter", "type=container", "--filter", "event=start"]
    proc = await trio.lowlevel.open_process(
        [*cmd, "--format", "{{.ID}}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        buf = b""
        async for chunk in proc.stdout:
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cid = line.decode(errors="replace").strip()
                if cid:
                    nursery.start_soon(_reattach, state_dir, cid)
    finally:
        with trio.CancelScope(shield=True):
            proc.kill()
            await proc.wait()


async def _follow_api(state_dir: Path, nursery: trio.Nursery) -> None:
    """The same from the engine's socket: a thread reads the event stream."""
    token = trio.lowlevel.current_trio_token()

    def read() -> None:
        for event in dockerapi.events(type=["container"], event=["start"]):
            cid = str(event.get("id") or (event.get("Actor") or {}).get("ID") or "")
            if cid:
                trio.from_thread.run_sync(
                    nursery.start_soon, _reattach, state_dir, cid, trio_token=token
                )

    await trio.to_thread.run_sync(read, abandon_on_cancel=True)


async def _client(state_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``mesh ARGS`` for this state directory (the client owns the records):
    the installed client, whatever directory the router was started from."""
    argv = [*client_argv(), *args, "--state-dir", str(state_dir)]
    try:
        return await trio.run_process(
            argv, capture_stdout=True, capture_stderr=True, check=False, cwd="/"
        )
    except OSError as exc:
        return subprocess.CompletedProcess(argv, 1, b"", str(exc).encode())


async def prune(state_dir: Path) -> None:
    """Containers were found gone: ``mesh prune`` drops their records (and so
    their anti-spoofing rules)."""
    done = await _client(state_dir, "prune")
    text = (done.stdout + done.stderr).decode(errors="replace").strip()
    if done.returncode != 0:
        log.warning("forgetting removed containers failed: %s", text)
    elif text:
        log.info("%s", text)


async def _reattach(state_dir: Path, cid: str) -> None:
    done = await _client(state_dir, "reattach", cid)
    text = (done.stdout + done.stderr).decode(errors="replace").strip()
    if done.returncode != 0:
        log.warning("container %s started again, but re-attaching failed: %s", cid[:12], text)
    elif text:
        log.info("container %s started again: %s", cid[:12], text)
