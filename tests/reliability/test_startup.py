"""A checkpoint that is missing, damaged or not ours stops `sm1-server` start-up with one clear line and
exit status 1, before it listens; weights are never unpickled."""

import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest

from sm1.checkpoint import _digest


def start_up(checkpoint: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM1_")}
    return subprocess.run(
        ["sm1-server", "--checkpoint", str(checkpoint), "--port", "0"],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def damaged_copy(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, copy)
    return copy


def record_digest(checkpoint: Path) -> None:
    """Make config.json vouch for the weights file as it now is (an attacker who can write both)."""
    config = json.loads((checkpoint / "config.json").read_text())
    config["files"]["model.safetensors"] = _digest(checkpoint / "model.safetensors")
    (checkpoint / "config.json").write_text(json.dumps(config))


class _Marker:
    """Unpickling this writes a file: proof that a loader ran pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "pickle ran"))


def truncate_weights(ck: Path, _: Path) -> str:
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    return "model.safetensors is truncated"


def flip_a_weight(ck: Path, _: Path) -> str:
    data = bytearray((ck / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (ck / "model.safetensors").write_bytes(bytes(data))
    return "does not match the SHA-256 recorded in config.json"


def break_config(ck: Path, _: Path) -> str:
    (ck / "config.json").write_text('{"format": ')
    return "config.json is not valid JSON"


def remove_vocab(ck: Path, _: Path) -> str:
    (ck / "vocab.json").unlink()
    return "vocab.json is missing"


def pickle_weights(ck: Path, tmp_path: Path) -> str:
    (ck / "model.safetensors").write_bytes(pickle.dumps({"weights": _Marker(tmp_path / "pwned")}))
    record_digest(ck)
    return "is not a readable safetensors file"


DAMAGE = [truncate_weights, flip_a_weight, break_config, remove_vocab, pickle_weights]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_a_damaged_checkpoint_stops_start_up_with_one_clear_line(tiny_checkpoint, tmp_path, damage):
    ck = damaged_copy(tiny_checkpoint, tmp_path)
    words = damage(ck, tmp_path)
    done = start_up(ck, tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sm1-server: cannot load the checkpoint: ") and words in lines[0]
    assert "Uvicorn running" not in done.stdout + done.stderr
    assert not (tmp_path / "pwned").exists()


def test_a_missing_checkpoint_folder_stops_start_up_with_one_clear_line(tmp_path):
    missing = tmp_path / "nowhere"
    done = start_up(missing, tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == f"sm1-server: cannot load the checkpoint: checkpoint folder {missing} does not exist"
