"""State files that went bad (issue 23, part 7): a truncated or overwritten
JSON file is moved aside, not lost to the next save, and the router starts
from nothing for it; an unreadable ipam.db stops the start with one line
naming the file and what to do, never a traceback (a crash loop)."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest

from meshrouter.attachments.attach import Registry
from meshrouter.contract.state import load_json
from meshrouter.daemon.persist import StateFiles
from meshrouter.ipam.store import IpamStore, IpamStoreError

NAME = b"\x02\x00\x00\x00\x00\x01"


def test_a_truncated_json_file_is_kept_aside_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "targets.json"
    path.write_text('["10.0.0.1", "10.0.0.2"')  # cut off by a full disk
    with caplog.at_level(logging.WARNING):
        assert load_json(path, []) == []
    assert not path.exists()
    assert (tmp_path / "targets.json.corrupt").read_text() == '["10.0.0.1", "10.0.0.2"'
    assert "targets.json was unreadable" in caplog.text
    assert "targets.json.corrupt" in caplog.text


@pytest.mark.parametrize("name", ["targets.json", "dns.json", "keys.json", "expose.json"])
@pytest.mark.parametrize("junk", [b"", b"\x00" * 64, b"{", "ø".encode("latin-1"), b"[1, 2"])
def test_every_state_file_of_the_router_survives_junk(
    tmp_path: Path, name: str, junk: bytes
) -> None:
    (tmp_path / name).write_bytes(junk)
    files = StateFiles(tmp_path)
    assert files.load_targets() == [] or name != "targets.json"
    assert files.load_dns(NAME) == [] or name != "dns.json"
    files.load_expose()
    files.load_keys(bytes(32), 0.0, 0.0)
    if junk:  # an empty file is no JSON either: kept aside the same way
        assert (tmp_path / f"{name}.corrupt").read_bytes() == junk


def test_a_corrupt_attachments_file_keeps_its_bytes(tmp_path: Path) -> None:
    (tmp_path / "attachments.json").write_text('{"web": {"container": "we')
    assert Registry(tmp_path).read() == {}
    assert (tmp_path / "attachments.json.corrupt").exists()


@pytest.mark.parametrize("seed", range(4))
def test_an_unreadable_ipam_db_is_one_line_naming_it(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "ipam.db"
    rnd = random.Random(seed)
    path.write_bytes(rnd.randbytes(rnd.choice([16, 4096, 10000])))
    with pytest.raises(IpamStoreError) as info:
        IpamStore(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "move it aside" in msg
    assert "\n" not in msg


def test_a_good_ipam_db_damaged_later_is_refused_the_same_way(tmp_path: Path) -> None:
    """A database whose pages were overwritten after it was made (a bad disk)."""
    from meshrouter.ipam.reclaim import Reclaimer
    from meshrouter.ipam.ring import Ipam

    path = tmp_path / "ipam.db"
    store = IpamStore(path)
    store.db.execute("INSERT INTO meta VALUES ('range', '10.32.0.0/12')")
    store.db.close()
    size = path.stat().st_size
    with path.open("r+b") as f:  # the header survives, the pages do not
        f.seek(100)
        f.write(os.urandom(max(size - 100, 4000)))

    def start() -> None:  # what the router does at start: open, then load
        IpamStore(path).load(Ipam(NAME, "10.32.0.0/12"), Reclaimer(NAME, 0.0))

    with pytest.raises(IpamStoreError, match="is unreadable"):
        start()


@pytest.mark.parametrize("after", [0, 5])
def test_a_full_disk_leaves_the_old_file_and_no_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after: int
) -> None:
    """ENOSPC on the first write, or after a short one: the old copy stays,
    nothing half-written is left, and the error names the file and directory."""
    import errno

    from meshrouter.contract import state

    path = tmp_path / "attachments.json"
    state.atomic_write(path, b'{"old": 1}')
    real = os.write
    calls = {"n": 0}

    def full(fd: int, data: bytes | memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 1 and after:
            return real(fd, bytes(data[:after]))  # a short write first
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state.os, "write", full)
    with pytest.raises(OSError, match="No space left") as info:
        state.atomic_write(path, b'{"new": 2, "more": "data"}')
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert str(tmp_path) in str(info.value)
    assert path.read_bytes() == b'{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["attachments.json"]
