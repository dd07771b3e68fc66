from __future__ import annotations

import pytest

from meshrouter.base.names import format_name, parse_name


def test_name_format_roundtrip() -> None:
    assert parse_name(format_name(b"\x02\xab\x00\x01\x02\x03")) == b"\x02\xab\x00\x01\x02\x03"
    with pytest.raises(ValueError, match="aa:bb"):
        parse_name("nope")
