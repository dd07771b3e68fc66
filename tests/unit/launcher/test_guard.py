"""The anti-spoofing table as text (no root): which sets hold each port,
and the fixed rules that look them up."""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshrouter.host.guard import RULES, TABLE, link_local, render


@dataclass
class Port:
    host_veth: str
    mac: str
    cidrs: list[str]
    guard: bool = True


@dataclass
class Port6(Port):
    cidrs6: list[str] | None = None


def elements(text: str, name: str) -> set[str]:
    m = re.search(rf"  set {name} {{ [^;]+(?:; elements = {{ (.*?) }})?; }}", text)
    assert m is not None, name
    return set(m.group(1).split(", ")) if m.group(1) else set()


def test_each_port_speaks_only_as_itself_and_nobody_speaks_as_it() -> None:
    text = render(
        [
            Port("vethwlb", "aa:00:00:00:00:02", ["10.32.0.2/12"]),
            Port("vethwla", "aa:00:00:00:00:01", ["10.99.1.1/16"]),  # outside the range too
        ]
    )
    assert text.startswith(f"table bridge {TABLE}\ndelete table bridge {TABLE}\n")
    assert elements(text, "s_guarded") == {'"vethwla"', '"vethwlb"'}
    assert elements(text, "s_port_mac") == {
        '"vethwla" . aa:00:00:00:00:01',
        '"vethwlb" . aa:00:00:00:00:02',
    }
    assert elements(text, "s_port_ip4") == {'"vethwla" . 10.99.1.1', '"vethwlb" . 10.32.0.2'}
    assert elements(text, "s_ip4") == {"10.99.1.1", "10.32.0.2"}
    assert elements(text, "s_mac") == {"aa:00:00:00:00:01", "aa:00:00:00:00:02"}
    for rule in RULES:  # the same fixed rules, whatever the ports
        assert f"    {rule}\n" in text
    for hook in ("forward", "input"):
        assert f"chain {hook} {{ type filter hook {hook} priority -10; policy accept;" in text
    # Each port has its counter, and what it sends that is dropped counts there.
    assert "counter spoof_vethwla { }" in text
    assert '"vethwla" : spoof_vethwla' in text


def test_the_rules_do_not_grow_with_the_ports() -> None:
    ports = [
        Port(
            f"vethwl{k:04x}",
            f"aa:00:00:00:{k >> 8:02x}:{k & 255:02x}",
            [f"10.32.{k >> 8}.{k & 255}/12"],
        )
        for k in range(1, 500)
    ]
    text = render(ports)
    chain = text[text.index("  chain guard {") :]
    chain = chain[: chain.index("  }\n")]
    assert chain.count("\n") == len(RULES) + 1
    assert len(elements(text, "s_port_ip4")) == 499


def test_no_ports_or_unguarded_ports_leave_no_table() -> None:
    empty = f"table bridge {TABLE}\ndelete table bridge {TABLE}\n"
    assert render([]) == empty
    assert render([Port("vethwla", "aa:00:00:00:00:01", ["10.32.0.1/12"], guard=False)]) == empty


def test_a_port_with_several_addresses_may_use_each_of_them() -> None:
    text = render([Port("vethwla", "aa:00:00:00:00:01", ["10.32.0.9/12", "10.32.0.1/12"])])
    assert elements(text, "s_port_ip4") == {'"vethwla" . 10.32.0.1', '"vethwla" . 10.32.0.9'}


def test_ipv6_sources_and_neighbor_advertisements_are_its_own_only() -> None:
    assert str(link_local("02:11:22:33:44:55")) == "fe80::11:22ff:fe33:4455"
    text = render([Port6("vethwla", "02:11:22:33:44:55", ["10.32.0.5/12"], cidrs6=["fd32::5/64"])])
    assert elements(text, "s_port_ip6") == {
        '"vethwla" . fe80::11:22ff:fe33:4455',
        '"vethwla" . fd32::5',
    }
    assert elements(text, "s_port_na") == {
        '"vethwla" . 0xfe80000000000000001122fffe334455',
        '"vethwla" . 0xfd32' + "0" * 27 + "5",
    }
    assert elements(text, "s_has4") == {'"vethwla"'}
    assert elements(text, "s_v6only") == set()
    assert any("nd-router-advert, nd-redirect" in r for r in RULES)


def test_an_ipv6_only_port_sends_no_ipv4_and_arp() -> None:
    text = render([Port6("vethwla", "02:11:22:33:44:55", [], cidrs6=["2001:db8::9/64"])])
    assert elements(text, "s_v6only") == {'"vethwla"'}
    assert elements(text, "s_has4") == set()
    assert elements(text, "s_port_ip4") == set()
    assert elements(text, "s_port_mac") == {'"vethwla" . 02:11:22:33:44:55'}
