"""A snapshot made by another checkpoint, or changed on the way, is refused with a clear error and never
takes a slot. (Snapshots carry a CRC-32, which any change flips; it is not a secret MAC: someone who
recomputes it can still alter the state numbers of their own session, but not its model or token ids.)"""

import json
import struct
import zlib

import pytest

from tests.reliability.conftest import serving

OCTETS = {"Content-Type": "application/octet-stream"}
HEAD = struct.Struct("<8sHI")  # sm1/engine.py: magic, version, length of the JSON header


@pytest.fixture(scope="module")
def servers(tiny_checkpoint, other_checkpoint, tmp_path_factory):
    with (
        serving(tiny_checkpoint, tmp_path_factory.mktemp("a")) as a,
        serving(other_checkpoint, tmp_path_factory.mktemp("b")) as b,
    ):
        yield a, b


def snapshot_of_a_session(server) -> bytes:
    with server.client() as http:
        sid = http.post("/v1/sessions", json={"params": {"seed": 7}}).json()["session"]
        blob = http.get(f"/v1/sessions/{sid}/snapshot").content
        http.delete(f"/v1/sessions/{sid}")
    return blob


def restore(server, blob: bytes):
    before = server.health()["sessions"]
    with server.client() as http:
        r = http.post("/v1/sessions", content=blob, headers=OCTETS)
    return r, server.health()["sessions"] - before


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_a_snapshot_restores_on_its_own_checkpoint_only(servers):
    a, b = servers
    blob = snapshot_of_a_session(a)
    mine, taken = restore(a, blob)
    assert mine.status_code == 201 and taken == 1
    theirs, taken = restore(b, blob)
    assert theirs.status_code == 422 and taken == 0
    assert theirs.json() == {
        "code": "bad_snapshot",
        "message": "snapshot was made by another checkpoint; restore it on a server running that one",
    }


@pytest.mark.parametrize("where", [20, -200, -5])  # header, state/logits, CRC itself
def test_a_snapshot_changed_anywhere_is_refused_as_damaged(servers, where):
    a, _ = servers
    blob = bytearray(snapshot_of_a_session(a))
    blob[where] ^= 0x01
    r, taken = restore(a, bytes(blob))
    assert r.status_code == 422 and taken == 0
    assert r.json() == {"code": "bad_snapshot", "message": "snapshot is damaged (checksum does not match)"}


def test_a_forged_snapshot_with_its_checksum_redone_is_still_checked_field_by_field(servers):
    """Another checkpoint's snapshot relabelled with this model's id, a token id put in, the CRC redone."""
    a, b = servers
    blob = snapshot_of_a_session(b)
    magic, version, n = HEAD.unpack_from(blob)
    header = json.loads(blob[HEAD.size : HEAD.size + n])
    with a.client() as http:
        header["model"] = http.get("/v1/model").json()["model_id"]
    header["pending"] = [10**6]  # and a token id outside the vocabulary
    head = json.dumps(header).encode()
    forged = with_crc(HEAD.pack(magic, version, len(head)) + head + blob[HEAD.size + n : -4])
    r, taken = restore(a, forged)
    assert r.status_code == 422 and taken == 0
    assert r.json() == {"code": "bad_snapshot", "message": "snapshot holds token ids outside the vocabulary"}
