"""A snapshot made by another checkpoint, changed on the way, or forged is refused with a clear error and
never takes a slot. Snapshots are signed with HMAC-SHA256: with SM1_SNAPSHOT_KEY set, only the servers that
share the key can make one they accept; without it the key is the public model id, which catches damage,
and a forgery signed with it is still checked field by field."""

import hashlib
import hmac
import json

import pytest

from sm1.blob import pack_blob, split_blob
from sm1.engine import SNAPSHOT_MAGIC, SNAPSHOT_VERSION
from tests.reliability.conftest import serving

OCTETS = {"Content-Type": "application/octet-stream"}


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


TAG = 32  # HMAC-SHA256 at the end of every snapshot
DAMAGED = "snapshot is damaged or was not signed by this server (signature does not match)"


def signed(body: bytes, key: bytes) -> bytes:
    return body + hmac.new(key, body, hashlib.sha256).digest()


def model_id(server) -> str:
    with server.client() as http:
        return http.get("/v1/model").json()["model_id"]


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


@pytest.mark.parametrize("where", [20, -200, -5])  # header, state/logits, the signature itself
def test_a_snapshot_changed_anywhere_is_refused_as_damaged(servers, where):
    a, _ = servers
    blob = bytearray(snapshot_of_a_session(a))
    blob[where] ^= 0x01
    r, taken = restore(a, bytes(blob))
    assert r.status_code == 422 and taken == 0
    assert r.json() == {"code": "bad_snapshot", "message": DAMAGED}


def test_a_forged_snapshot_signed_with_the_public_model_id_is_still_checked_field_by_field(servers):
    """On a server with no snapshot key: another checkpoint's snapshot relabelled with this model's id, a
    token id put in, and signed again with the (public) model id."""
    a, b = servers
    blob = snapshot_of_a_session(b)
    head, payload = split_blob(blob[:-TAG], SNAPSHOT_MAGIC, SNAPSHOT_VERSION, "session snapshot", ValueError)
    header = json.loads(head)
    header["model"] = model_id(a)
    header["pending"] = [10**6]  # and a token id outside the vocabulary
    body = pack_blob(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, json.dumps(header).encode(), payload)
    forged = signed(body, header["model"].encode())
    r, taken = restore(a, forged)
    assert r.status_code == 422 and taken == 0
    assert r.json() == {"code": "bad_snapshot", "message": "snapshot holds token ids outside the vocabulary"}


def test_with_a_snapshot_key_only_snapshots_signed_with_it_restore(tiny_checkpoint, tmp_path):
    """Altered state numbers re-signed with the public model id, or a snapshot from a server with another
    key, are refused; the server's own snapshot restores."""
    (tmp_path / "k1").mkdir()
    (tmp_path / "k2").mkdir()
    with (
        serving(tiny_checkpoint, tmp_path / "k1", snapshot_key="replica secret") as keyed,
        serving(tiny_checkpoint, tmp_path / "k2", snapshot_key="another secret") as other,
    ):
        blob = snapshot_of_a_session(keyed)
        ok, taken = restore(keyed, blob)
        assert ok.status_code == 201 and taken == 1

        body = bytearray(blob[:-TAG])
        body[-100] ^= 0x40  # a number of the session's state, changed on purpose
        forged = signed(bytes(body), model_id(keyed).encode())
        for server, data in [(keyed, forged), (other, blob)]:
            r, taken = restore(server, data)
            assert r.status_code == 422 and taken == 0
            assert r.json() == {"code": "bad_snapshot", "message": DAMAGED}
