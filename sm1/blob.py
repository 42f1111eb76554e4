"""Versioned binary blobs: magic bytes, a version, a JSON header, then raw payload. State blobs
(sm1/state.py) and session snapshots (sm1/engine.py) are both written this way."""

from __future__ import annotations

import struct


def _head(magic: bytes) -> struct.Struct:
    return struct.Struct(f"<{len(magic)}sHI")  # magic, version, length of the JSON header


def pack_blob(magic: bytes, version: int, header: bytes, payload: bytes) -> bytes:
    return _head(magic).pack(magic, version, len(header)) + header + payload


def split_blob(data: bytes, magic: bytes, version: int, what: str, error: type[Exception]) -> tuple[bytes, bytes]:
    """(JSON header, payload) of a blob of this kind, or `error` saying why `data` is not one."""
    head = _head(magic)
    if len(data) < head.size:
        raise error(f"{what} is too short to be one")
    got_magic, got_version, n = head.unpack_from(data)
    if got_magic != magic:
        raise error(f"not an SM1 {what} (bad magic bytes)")
    if got_version != version:
        raise error(f"{what} version {got_version} is not supported (this server reads {version})")
    return data[head.size : head.size + n], data[head.size + n :]
