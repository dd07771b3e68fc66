"""The anti-spoofing table as text (no root): what each port may and may not send."""

from __future__ import annotations

from dataclasses import dataclass

from meshrouter.host.guard import TABLE, render


@dataclass
class Port:
    host_veth: str
    mac: str
    cidrs: list[str]
    guard: bool = True


def test_each_port_speaks_only_as_itself_and_nobody_speaks_as_it() -> None:
    text = render(
        [
            Port("vethwlb", "aa:00:00:00:00:02", ["10.32.0.2/12"]),
            Port("vethwla", "aa:00:00:00:00:01", ["10.99.1.1/16"]),
        ]
    )
    assert text.startswith(f"table bridge {TABLE}\ndelete table bridge {TABLE}\n")
    a = text[text.index("chain port_vethwla {") : text.index("chain port_vethwlb {")]
    for rule in (
        'iifname "vethwla" ether saddr != aa:00:00:00:00:01 counter drop',
        'iifname "vethwla" arp saddr ip != 10.99.1.1 counter drop',  # outside the range too
        'iifname "vethwla" ip saddr != 10.99.1.1 counter drop',
        'iifname != "vethwla" ether saddr aa:00:00:00:00:01 counter drop',
        'iifname != "vethwla" arp saddr ip 10.99.1.1 counter drop',
        'iifname != "vethwla" ip saddr 10.99.1.1 counter drop',
    ):
        assert rule in a
    for hook in ("forward", "input"):
        assert f"chain {hook} {{ type filter hook {hook} priority -10; policy accept;" in text
    assert text.count("jump port_vethwla") == 2


def test_no_ports_or_unguarded_ports_leave_no_table() -> None:
    empty = f"table bridge {TABLE}\ndelete table bridge {TABLE}\n"
    assert render([]) == empty
    assert render([Port("vethwla", "aa:00:00:00:00:01", ["10.32.0.1/12"], guard=False)]) == empty


def test_a_port_with_several_addresses_may_use_each_of_them() -> None:
    text = render([Port("vethwla", "aa:00:00:00:00:01", ["10.32.0.9/12", "10.32.0.1/12"])])
    both = "{ 10.32.0.1, 10.32.0.9 }"
    assert f'iifname "vethwla" ip saddr != {both} counter drop' in text
    assert f'iifname "vethwla" arp saddr ip != {both} counter drop' in text
    assert f'iifname != "vethwla" ip saddr {both} counter drop' in text


@dataclass
class Port6(Port):
    cidrs6: list[str] | None = None


def test_ipv6_sources_and_neighbor_advertisements_are_its_own_only() -> None:
    from meshrouter.host.guard import link_local

    assert str(link_local("02:11:22:33:44:55")) == "fe80::11:22ff:fe33:4455"
    text = render([Port6("vethwla", "02:11:22:33:44:55", ["10.32.0.5/12"], cidrs6=["fd32::5/64"])])
    own = "{ fe80::11:22ff:fe33:4455, fd32::5, :: }"
    assert f'iifname "vethwla" ip6 saddr != {own} counter drop' in text
    assert 'iifname "vethwla" icmpv6 type { nd-router-advert, nd-redirect } counter drop' in text
    na = "@th,64,128 != 0xfe80000000000000001122fffe334455 @th,64,128 != 0xfd32" + "0" * 27 + "5"
    assert f'iifname "vethwla" icmpv6 type nd-neighbor-advert {na} counter drop' in text
    assert (
        'iifname != "vethwla" ip6 saddr { fe80::11:22ff:fe33:4455, fd32::5 } counter drop' in text
    )


def test_an_ipv6_only_port_sends_no_ipv4_and_arp() -> None:
    text = render([Port6("vethwla", "02:11:22:33:44:55", [], cidrs6=["2001:db8::9/64"])])
    assert 'iifname "vethwla" ether type { arp, ip } counter drop' in text
    assert "ip saddr" not in text
    assert 'iifname != "vethwla" ether saddr 02:11:22:33:44:55 counter drop' in text
