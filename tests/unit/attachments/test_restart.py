"""What a restart or a removal does to the records, with no engine and no
network: the engine's answers and the attach are stand-ins."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshrouter.attachments import attach as attach_mod
from meshrouter.attachments import restart
from meshrouter.engines.containers import Container

CID = "c0ffee" * 10 + "abcd"


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> attach_mod.Registry:
    monkeypatch.setattr(attach_mod.Registry, "apply_guard", lambda self, records: None)
    monkeypatch.setattr(attach_mod, "link_exists", lambda name: False)
    monkeypatch.setattr(restart, "link_exists", lambda name: False)
    reg = attach_mod.Registry(tmp_path)
    with reg.locked() as records:
        records[CID] = attach_mod.Attachment(
            "web01", "docker", CID, "/proc/1/ns/net", "vethwl1", ["10.32.0.5/12"], "", "web01"
        )
    return reg


class NoMesh:
    def allocate(self, container: str, ns_path: str, subnet: str | None) -> str:
        raise AssertionError("not asked")

    def claim(self, cidr: str, container: str, ns_path: str) -> str:
        return cidr

    def release(self, container: str, addrs: list[str] | None = None) -> None:
        raise AssertionError("not asked")

    def holder(self, address: str) -> str | None:
        return None

    def add_name(self, container: str, names: list[str], addrs: list[str]) -> None:
        pass


SETTINGS = restart.Settings("mesh", "10.32.0.0/12", 1376)


def test_a_reattach_that_fails_keeps_the_record_and_so_the_address(
    registry: attach_mod.Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container started again whose attach fails (a clash, a full disk)
    is still recorded with its address: the next start or catch-up tries
    again, and the namespace poll does not take it for removed."""
    found = Container(CID, "docker", "/proc/2/ns/net", "2", CID, "web01")
    monkeypatch.setattr(restart, "find_container", lambda kind, ident: found)

    def refuse(*args: object, **kw: object) -> None:
        raise attach_mod.AttachError("10.32.0.5 is already attached to web00 on this host")

    monkeypatch.setattr(attach_mod, "attach", refuse)
    with pytest.raises(restart.RestartError, match="already attached"):
        restart.reattach(registry, CID, SETTINGS, NoMesh())
    kept = registry.read()[CID]
    assert kept.cidrs == ["10.32.0.5/12"]
    assert kept.container == "web01"


def test_a_removed_container_is_forgotten_before_anything_is_released(
    registry: attach_mod.Registry,
) -> None:
    rec = attach_mod.forget(registry, CID)
    assert rec is not None
    assert rec.cidrs == ["10.32.0.5/12"]
    assert CID not in registry.read()
    assert attach_mod.forget(registry, CID) is None  # a second destroy event: nothing
    with registry.locked() as records:  # a namespace of the same name is no engine's
        records["web02"] = attach_mod.Attachment(
            "web02", "netns", "web02", "/run/netns/web02", "vethwl2", ["10.32.0.6/12"], ""
        )
    assert attach_mod.forget(registry, "web02") is None
    assert "web02" in registry.read()
