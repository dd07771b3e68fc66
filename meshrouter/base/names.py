"""Peer names: 6 bytes, written like a MAC address (aa:bb:cc:dd:ee:ff)."""

from __future__ import annotations


def format_name(name: bytes) -> str:
    return ":".join(f"{b:02x}" for b in name)


def parse_name(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"peer name {text!r} is not of the form aa:bb:cc:dd:ee:ff")
    return bytes(int(p, 16) for p in parts)
