"""The typed client/daemon contract: every request survives the wire as it
was sent, garbage is refused with one line (BadInput only), and the daemon's
handler table serves every request type the contract has."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshrouter.base.errors import BadInput
from meshrouter.contract import requests as rq
from meshrouter.daemon import api

TEXT = st.text(min_size=1, max_size=20)


def value_for(f: rq.Arg) -> st.SearchStrategy[Any]:
    kind = str(f.type)
    base: st.SearchStrategy[Any]
    if kind.startswith("list"):
        base = st.lists(TEXT, max_size=3)
    elif kind.startswith("str"):
        base = TEXT
    elif kind == "bool":
        base = st.booleans()
    elif kind == "int":
        base = st.integers(f.metadata.get("low", 0), f.metadata.get("high", 10**6))
    else:
        base = st.floats(f.metadata.get("low", 0.0), f.metadata.get("high", 1e6))
    return st.one_of(st.none(), base) if kind.endswith("| None") else base


@st.composite
def requests(draw: st.DrawFn) -> rq.Request[Any]:
    cls = draw(st.sampled_from(sorted(rq.REQUESTS.values(), key=lambda c: c.op)))
    return cls(**{f.name: draw(value_for(f)) for f in cls.FIELDS})


@given(requests())
def test_a_request_reads_back_as_it_was_sent(q: rq.Request[Any]) -> None:
    back = rq.parse_untrusted(q.to_json())
    assert back == q
    for f in type(q).FIELDS:  # each field reads as its value, never as its spec
        assert getattr(back, f.name) == q.to_json().get(f.name, f.default if f.default else None)
    with pytest.raises(AttributeError):
        back.op = "stop"  # type: ignore[misc]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3)
    ),
    max_leaves=10,
)


@given(st.sampled_from(sorted(rq.REQUESTS)), st.dictionaries(st.text(max_size=10), JSON))
def test_garbage_is_refused_with_bad_input_alone(op: str, doc: dict[str, Any]) -> None:
    fields = {f.name for f in rq.REQUESTS[op].FIELDS}
    doc = {**{k: v for k, v in doc.items() if k != "op"}, "op": op}
    for name in fields:  # give every field a shot at garbage
        doc.setdefault(name, None)
    error = ""
    try:
        q = rq.parse_untrusted(doc)
    except BadInput as exc:
        error = str(exc)
    else:
        assert type(q) is rq.REQUESTS[op]
    assert "\n" not in error
    assert not error or f'"{op}"' in error


@pytest.mark.parametrize("doc", [None, [], "status", {"op": 3}, {"op": "fly"}, {}])
def test_what_is_no_request_says_so(doc: Any) -> None:
    with pytest.raises(BadInput):
        rq.parse_untrusted(doc)


def test_the_handler_table_serves_every_request() -> None:
    assert set(api.HANDLERS) == set(rq.REQUESTS.values())
    assert set(api.HANDLERS) >= api.CHANGES_TARGETS


def test_the_wire_form_is_the_one_clients_of_0_1_sent() -> None:
    assert rq.Allocate("c1", "/x").to_json() == {
        "op": "allocate",
        "container": "c1",
        "ns_path": "/x",
    }
    assert rq.Ping("h2").to_json() == {"op": "ping", "peer": "h2", "count": 3, "interval": 0.2}
    assert rq.Release("c1").to_json() == {"op": "release", "container": "c1"}
