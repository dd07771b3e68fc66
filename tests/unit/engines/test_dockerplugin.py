"""The Docker network and IPAM driver, sans IO: HTTP framing (fuzzed), what
each request means, and the service over a real unix socket with a stand-in
router (no root, no Docker)."""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from meshrouter.base.errors import BadPacket
from meshrouter.engines.plugin import (
    Allocate,
    Claim,
    DeleteVeth,
    HttpRequests,
    MakeVeth,
    Plugin,
    PluginError,
    Release,
    parse_pool_id,
    veth_names,
)
from meshrouter.engines.pluginservice import PluginService

EP = "0123456789abcdef" * 4


def post(path: str, doc: Any, *, close: bool = False) -> bytes:
    body = json.dumps(doc).encode()
    conn = "Connection: close\r\n" if close else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {len(body)}\r\n{conn}"
        "Content-Type: application/json\r\n\r\n"
    ).encode() + body


def test_requests_are_framed_across_any_split() -> None:
    wire = post("/Plugin.Activate", {}) + post("/IpamDriver.RequestPool", {"Pool": ""}, close=True)
    for cut in range(len(wire) + 1):
        parser = HttpRequests()
        got = parser.receive_untrusted(wire[:cut]) + parser.receive_untrusted(wire[cut:])
        assert [(r.method, r.path, r.keep_alive) for r in got] == [
            ("POST", "/Plugin.Activate", True),
            ("POST", "/IpamDriver.RequestPool", False),
        ]
        assert json.loads(got[1].body) == {"Pool": ""}


@given(st.binary(max_size=400))
def test_garbage_raises_only_bad_packet(data: bytes) -> None:
    parser = HttpRequests()
    try:
        parser.receive_untrusted(data)
        parser.receive_untrusted(b"\r\n\r\n")
    except BadPacket:
        pass


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (b"POST /x\r\n\r\n", "request line"),
        (b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "refused"),
        (b"POST /x HTTP/1.1\r\nContent-Length: 9999999\r\n\r\n", "refused"),
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "chunked"),
        (b"POST /x HTTP/1.1\r\nno colon\r\n\r\n", "header"),
        (b"X" * 20000, "too long"),
    ],
)
def test_bad_http_is_refused_with_a_reason(wire: bytes, why: str) -> None:
    with pytest.raises(BadPacket, match=why):
        HttpRequests().receive_untrusted(wire)


def decide(plugin: Plugin, method: str, doc: Any) -> Any:
    return plugin.decide("POST", "/" + method, json.dumps(doc).encode())


@given(st.sampled_from(["NetworkDriver.Join", "IpamDriver.RequestAddress", "Nope"]), st.binary())
def test_any_body_is_answered_or_refused_with_plugin_error(method: str, body: bytes) -> None:
    with contextlib.suppress(PluginError):
        Plugin("10.32.0.0/12").decide("POST", "/" + method, body)


def test_pools_are_the_range_or_a_subnet_of_it() -> None:
    p = Plugin("10.32.0.0/12")
    assert decide(p, "Plugin.Activate", {}) == {"Implements": ["NetworkDriver", "IpamDriver"]}
    whole = decide(p, "IpamDriver.RequestPool", {"AddressSpace": "meshlocal", "Pool": ""})
    assert whole["Pool"] == "10.32.0.0/12"
    assert whole["Data"] == {"com.docker.network.gateway": "10.32.0.0/12"}
    assert parse_pool_id(whole["PoolID"])[1].exploded == "10.32.0.0/12"
    sub = decide(p, "IpamDriver.RequestPool", {"Pool": "10.40.0.0/16", "SubPool": "10.40.1.0/24"})
    assert sub["Pool"] == "10.40.0.0/16"
    with pytest.raises(PluginError, match="outside the mesh range"):
        decide(p, "IpamDriver.RequestPool", {"Pool": "192.168.0.0/16"})
    with pytest.raises(PluginError, match="IPv4 only"):
        decide(p, "IpamDriver.RequestPool", {"V6": True})
    with pytest.raises(PluginError, match="ipam-driver mesh"):
        decide(p, "NetworkDriver.CreateNetwork", {"IPv4Data": [{"Pool": "172.18.0.0/16"}]})
    assert decide(p, "NetworkDriver.CreateNetwork", {"IPv4Data": [{"Pool": "10.32.0.0/12"}]}) == {}


def test_addresses_come_from_ipam_and_the_gateway_is_never_one() -> None:
    p = Plugin("10.32.0.0/12")
    pool = decide(p, "IpamDriver.RequestPool", {"Pool": "10.40.0.0/16", "SubPool": "10.40.1.0/24"})
    pid = pool["PoolID"]
    assert decide(p, "IpamDriver.RequestAddress", {"PoolID": pid}) == Allocate("10.40.1.0/24", 16)
    assert decide(p, "IpamDriver.RequestAddress", {"PoolID": pid, "Address": "10.40.0.9"}) == Claim(
        "10.40.0.9/16"
    )
    gw = {"PoolID": pid, "Options": {"RequestAddressType": "com.docker.network.gateway"}}
    assert decide(p, "IpamDriver.RequestAddress", gw)["Address"] == "10.40.0.0/16"
    with pytest.raises(PluginError, match="not in the network's subnet"):
        decide(p, "IpamDriver.RequestAddress", {"PoolID": pid, "Address": "10.33.0.9"})
    with pytest.raises(PluginError, match="unknown pool"):
        decide(p, "IpamDriver.RequestAddress", {"PoolID": "default-x"})
    rel = decide(p, "IpamDriver.ReleaseAddress", {"PoolID": pid, "Address": "10.40.0.9"})
    assert rel == Release("10.40.0.9")
    assert decide(p, "IpamDriver.ReleaseAddress", {"PoolID": pid, "Address": "10.40.0.0"}) == {}
    assert p.answer(Allocate("10.40.1.0/24", 16), "10.40.1.7/24") == {
        "Address": "10.40.1.7/16",
        "Data": {},
    }


def test_endpoints_are_veth_pairs_named_after_them() -> None:
    p = Plugin("10.32.0.0/12")
    host, peer = veth_names(EP)
    assert len(host) <= 15
    assert len(peer) <= 15
    assert host != peer
    assert decide(p, "NetworkDriver.CreateEndpoint", {"EndpointID": EP, "Interface": {}}) == (
        MakeVeth(host, peer)
    )
    join = decide(p, "NetworkDriver.Join", {"EndpointID": EP, "SandboxKey": "/x"})
    assert join["InterfaceName"] == {"SrcName": peer, "DstPrefix": "ethwe"}
    assert join["StaticRoutes"] == []
    with_dns = Plugin("10.32.0.0/12", "169.254.53.53")
    join = decide(with_dns, "NetworkDriver.Join", {"EndpointID": EP})
    assert join["StaticRoutes"] == [{"Destination": "169.254.53.53/32", "RouteType": 1}]
    assert decide(p, "NetworkDriver.DeleteEndpoint", {"EndpointID": EP}) == DeleteVeth(host)
    with pytest.raises(PluginError, match="hexadecimal id"):
        decide(p, "NetworkDriver.Join", {"EndpointID": "../../etc"})
    with pytest.raises(PluginError, match="not supported"):
        decide(p, "NetworkDriver.Frobnicate", {})
    with pytest.raises(PluginError, match="takes POST"):
        p.decide("GET", "/Plugin.Activate", b"")


class StandInRouter:
    def __init__(self) -> None:
        self.held: dict[str, str] = {}

    async def allocate(self, container: str, ns_path: str, subnet: str | None) -> str:
        addr = f"10.40.1.{len(self.held) + 1}/24"
        self.held[addr.split("/")[0]] = container
        return addr

    async def claim(self, cidr: str, container: str, ns_path: str) -> str:
        ip = cidr.split("/")[0]
        if ip in self.held:
            from meshrouter.base.errors import IpamError

            raise IpamError(f"{ip} is already in use")
        self.held[ip] = container
        return cidr

    def release_address(self, address: str) -> bool:
        return self.held.pop(address, None) is not None


async def test_the_service_answers_docker_over_its_socket(tmp_path: Path) -> None:
    router = StandInRouter()
    service = PluginService(router, "10.32.0.0/12", "mesh", 1376)
    path = tmp_path / "plugins" / "mesh.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(service.serve, path)
        assert path.stat().st_mode & 0o777 == 0o600

        def talk(*wires: bytes) -> list[Any]:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
                s.sendall(b"".join(wires))
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            return [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in _split(data)]

        pool = {"PoolID": "mesh-10.40.0.0/16-10.40.1.0/24"}
        answers = await trio.to_thread.run_sync(
            lambda: talk(
                post("/Plugin.Activate", {}),
                post("/IpamDriver.RequestAddress", pool),
                post("/IpamDriver.RequestAddress", dict(pool, Address="10.40.1.1")),
                post("/IpamDriver.ReleaseAddress", dict(pool, Address="10.40.1.1"), close=True),
            )
        )
        assert answers[0]["Implements"] == ["NetworkDriver", "IpamDriver"]
        assert answers[1] == {"Address": "10.40.1.1/16", "Data": {}}
        assert "already in use" in answers[2]["Err"]
        assert answers[2]["Error"] == answers[2]["Err"]
        assert answers[3] == {}
        assert router.held == {}
        # Garbage closes that connection, is counted, and the next one is served.
        bad = await trio.to_thread.run_sync(lambda: talk(b"GARBAGE\r\n\r\n"))
        assert bad == []
        again = await trio.to_thread.run_sync(
            lambda: talk(post("/Plugin.Activate", {}, close=True))
        )
        assert again[0]["Implements"]
        assert service.statistics() == {"requests": 5, "refused": 1, "bad": 1}
        nursery.cancel_scope.cancel()
    assert not path.exists()


def _split(data: bytes) -> list[bytes]:
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        out.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:]
    return out
