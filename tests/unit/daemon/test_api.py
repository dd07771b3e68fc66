"""The API's request handling, over an in-memory stream and a fake router."""

from __future__ import annotations

import json
import logging
from typing import Any, cast

import pytest
import trio
import trio.testing

from meshrouter.base.boundary import Boundary
from meshrouter.base.errors import IpamError
from meshrouter.contract.status import RouterStatus
from meshrouter.daemon import api


class FakeRouter:
    def __init__(self) -> None:
        self.stop_requested = trio.Event()
        self.boundary = Boundary(logging.getLogger("test"))
        self.targets: list[str] = []
        self.calls: list[tuple[str, ...]] = []

    def status(self) -> RouterStatus:
        return cast(RouterStatus, {"name": "me", "ipam": {"range": "10.32.0.0/12"}})

    def connect(self, address: str) -> str:
        self.targets.append(address)
        return address + ":6783"

    def forget(self, address: str) -> str | None:
        return address if address in self.targets else None

    async def allocate(
        self, container: str, ns_path: str, subnet: str | None, asker: object = None
    ) -> str:
        self.calls.append(("allocate", container, ns_path, str(subnet)))
        return "10.32.0.1/12"

    async def claim(self, cidr: str, container: str, ns_path: str, asker: object = None) -> str:
        raise IpamError(f"{cidr} is already in use")

    def release(self, container: str, addrs: list[str] | None = None) -> list[str]:
        return ["10.32.0.1"] if addrs is None else [a.split("/")[0] for a in addrs]

    async def rotate_password(self, password: str, window: float | None) -> str:
        self.calls.append(("rotate", password, str(window)))
        return "mesh password rotated (epoch 1)"

    def holder(self, address: str) -> str | None:
        return "docker-net/ab12" if address == "10.32.0.9" else None

    def rmpeer(self, who: str) -> str:
        raise IpamError(f"no peer named {who!r}")

    def dns_status(self) -> Any:
        return {"enabled": True}

    def dns_add(self, container: str, names: list[str], addrs: list[str]) -> int:
        self.calls.append(("dns_add", container, *names, *addrs))
        return len(addrs)

    def dns_remove(self, container: str, name: str | None, addr: str | None) -> int:
        self.calls.append(("dns_remove", container, str(name), str(addr)))
        return 1

    def dns_lookup(self, name: str) -> list[str]:
        if "!" in name:
            raise IpamError(f"invalid DNS name {name!r}")
        return ["10.32.0.1"]

    async def expose(self, cidr: str | None, masquerade: bool, fqdn: str | None) -> str:
        self.calls.append(("expose", str(cidr), str(masquerade), str(fqdn)))
        return "10.32.0.9/12"

    def hide(self) -> str:
        return "10.32.0.9/12"

    async def reset(self) -> str:
        self.stop_requested.set()
        return "address share handed to x"


async def ask(router: FakeRouter, raw: bytes) -> Any:
    client, server = trio.testing.memory_stream_pair()
    changes: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(api.handle_stream, router, server, lambda: changes.append(1))
        await client.send_all(raw)
        if not raw:
            await client.send_eof()  # a client that hangs up without asking
        reply = b""
        while not reply.endswith(b"\n"):
            reply += await client.receive_some()
    return json.loads(reply), len(changes)


async def test_status_connect_forget_and_stop() -> None:
    r = FakeRouter()
    assert await ask(r, b'{"op": "status"}\n') == ({"ok": True, "result": r.status()}, 0)
    reply, changed = await ask(r, b'{"op": "connect", "peer": "h2"}\n')
    assert reply == {"ok": True, "result": "h2:6783"}
    assert changed == 1  # the targets are persisted
    reply, _ = await ask(r, b'{"op": "forget", "peer": "h3"}\n')
    assert reply["ok"] is False
    assert "not a connection target" in reply["error"]
    assert (await ask(r, b'{"op": "ipam"}\n'))[0]["result"] == {"range": "10.32.0.0/12"}
    assert (await ask(r, b'{"op": "stop"}\n'))[0]["result"] == "stopping"
    assert r.stop_requested.is_set()


async def test_ipam_requests_and_their_errors_are_one_line() -> None:
    r = FakeRouter()
    reply, _ = await ask(r, b'{"op": "allocate", "container": "c1", "ns_path": "/x"}\n')
    assert reply == {"ok": True, "result": "10.32.0.1/12"}
    assert r.calls == [("allocate", "c1", "/x", "None")]
    reply, _ = await ask(r, b'{"op": "claim", "container": "c1", "cidr": "10.32.0.5/12"}\n')
    assert reply == {"ok": False, "error": "10.32.0.5/12 is already in use"}
    reply, _ = await ask(r, b'{"op": "rmpeer", "peer": "ghost"}\n')
    assert reply == {"ok": False, "error": "no peer named 'ghost'"}
    reply, _ = await ask(r, b'{"op": "holder", "address": "10.32.0.9"}\n')
    assert reply == {"ok": True, "result": "docker-net/ab12"}
    reply, _ = await ask(r, b'{"op": "holder", "address": "10.32.0.8"}\n')
    assert reply == {"ok": True, "result": None}
    reply, _ = await ask(r, b'{"op": "password_rotate", "password": "new", "window": 60}\n')
    assert reply == {"ok": True, "result": "mesh password rotated (epoch 1)"}
    assert r.calls[-1] == ("rotate", "new", "60.0")
    reply, _ = await ask(r, b'{"op": "password_rotate"}\n')
    assert "needs a" in reply["error"]


async def test_dns_and_host_requests() -> None:
    r = FakeRouter()
    req = {"op": "dns_add", "container": "c1", "names": ["web"], "addrs": ["10.32.0.1"]}
    assert (await ask(r, json.dumps(req).encode() + b"\n"))[0]["result"] == 1
    req = {"op": "dns_remove", "container": "c1", "addr": "10.32.0.1"}
    assert (await ask(r, json.dumps(req).encode() + b"\n"))[0]["result"] == 1
    reply, _ = await ask(r, b'{"op": "dns_lookup", "name": "bad!"}\n')
    assert reply == {"ok": False, "error": "invalid DNS name 'bad!'"}
    reply, _ = await ask(r, b'{"op": "expose", "masquerade": false}\n')
    assert reply["result"] == "10.32.0.9/12"
    assert (await ask(r, b'{"op": "reset"}\n'))[0]["ok"] is True
    assert r.stop_requested.is_set()
    assert r.calls == [
        ("dns_add", "c1", "web", "10.32.0.1"),
        ("dns_remove", "c1", "None", "10.32.0.1"),
        ("expose", "None", "False", "None"),
    ]


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"not json\n", "Expecting value"),
        (b"[1, 2]\n", '"op" string'),
        (b'{"op": "fly"}\n', "unknown op 'fly'"),
        (b'{"op": "connect"}\n', '"connect" needs a "peer"'),
        (b'{"op": "release"}\n', '"release" needs a "container"'),
        (b'{"op": "dns_add", "container": "c", "names": "web"}\n', '"names", a list of strings'),
        (b'{"op": "dns_lookup"}\n', '"dns_lookup" needs a "name"'),
        (b'{"op": "dns_fly"}\n', "unknown op 'dns_fly'"),
        (b"", "Expecting value"),
        (b"[" * 60000 + b"\n", "request: JSON nested deeper than 32 levels"),
        (b"\xff\xfe\n", "request: not UTF-8"),
        (b'{"op": "ping"}\n', '"ping" needs a "peer" name'),
        (b'{"op": "ping", "peer": "h2", "count": 1000}\n', '"count" must be a number from 1'),
    ],
)
async def test_bad_requests_get_a_reason(raw: bytes, error: str) -> None:
    reply, _ = await ask(FakeRouter(), raw)
    assert reply["ok"] is False
    assert error in reply["error"]


async def test_a_silent_client_is_answered_after_the_timeout(autojump_clock: object) -> None:
    reply, _ = await ask(FakeRouter(), b'{"op": "sta')
    assert reply["ok"] is False


class BuggyRouter(FakeRouter):
    def status(self) -> RouterStatus:
        raise KeyError("a bug in the status")


async def test_a_bug_behind_one_request_fails_that_request_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = BuggyRouter()
    reply, _ = await ask(router, b'{"op": "status"}\n')
    assert reply == {"ok": False, "error": "internal error (KeyError); the router logged it"}
    assert router.boundary.counts["api_errors"] == 1
    assert any("a request failed" in r.getMessage() and r.exc_info for r in caplog.records)
    reply, _ = await ask(router, b'{"op": "connect", "peer": "h3"}\n')
    assert reply["ok"] is True  # the next request is served
