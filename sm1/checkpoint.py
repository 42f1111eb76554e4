"""Checkpoints: a folder of three plain files, no pickle, checked on load.

    <dir>/config.json        format version, name, architecture, model config, digests, training meta
    <dir>/model.safetensors  weights (fp32, or bf16/fp16 to keep a shipped file small; loaded back as fp32)
    <dir>/vocab.json         the tokenizer the model was trained with

config.json records the size and SHA-256 of the weights and the fingerprint of the vocabulary, so a
truncated download, an edited weight file or a vocabulary from another tokenizer is refused with a message
that says which file and why, instead of a model that loads and then plays noise. Other files in the
folder (the model card, samples) are left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from sm1.gpt import GPT, GPTConfig
from sm1.model import SM1, SM1Config
from sm1.state import state_floats
from sm1.tokenizer import Tokenizer, VocabError

FORMAT = "sm1-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE = "config.json", "model.safetensors", "vocab.json"
DEFAULT_FILE = "DEFAULT"  # checkpoints/DEFAULT names the folder `load(None)` uses
ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {"sm1": (SM1Config, SM1), "gpt": (GPTConfig, GPT)}
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(Exception):
    """A checkpoint that cannot be used as it is: the message names the file and what is wrong with it."""


@dataclass
class LoadedCheckpoint:
    model: nn.Module  # eval mode, fp32, on the requested device
    config: SM1Config | GPTConfig
    tokenizer: Tokenizer
    name: str
    path: Path
    architecture: str = "sm1"
    meta: dict = field(default_factory=dict)


def default_checkpoints_dir() -> Path:
    """$SM1_CHECKPOINTS, else the repository's checkpoints/ folder."""
    env = os.environ.get("SM1_CHECKPOINTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "checkpoints"


def architecture_of(model: nn.Module) -> str:
    for arch, (_, cls) in ARCHITECTURES.items():
        if isinstance(model, cls):
            return arch
    raise CheckpointError(f"cannot save a {type(model).__name__}: known architectures are {sorted(ARCHITECTURES)}")


def build_model(architecture: str, config_dict: dict) -> tuple[SM1Config | GPTConfig, nn.Module]:
    config_cls, model_cls = ARCHITECTURES[architecture]
    config = config_cls.from_dict(config_dict)
    return config, model_cls(config)


def save(
    directory: str | Path,
    model: nn.Module,
    tokenizer: Tokenizer,
    meta: dict | None = None,
    *,
    name: str | None = None,
    dtype: str = "float32",
) -> Path:
    """Write config.json, model.safetensors and vocab.json into `directory` (created if needed).

    `dtype` is the storage type of the weight matrices ("float32", "bfloat16", "float16"); loading always
    gives fp32.
    Each file is written to a temporary name and renamed, config.json last, so a crash mid-save leaves
    either the old checkpoint or one whose digests reveal it.
    """
    if dtype not in STORAGE_DTYPES:
        raise CheckpointError(f"storage dtype {dtype!r} is not one of {sorted(STORAGE_DTYPES)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arch = architecture_of(model)
    config = model.config
    if config.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(
            f"model vocab_size {config.vocab_size} does not match the tokenizer's {tokenizer.vocab_size}"
        )
    weights = {k: _stored(v, STORAGE_DTYPES[dtype]) for k, v in unique_state_dict(model).items()}
    _write_atomic(directory / WEIGHTS_FILE, lambda p: save_file(weights, p, metadata={"format": FORMAT}))
    _write_atomic(directory / VOCAB_FILE, tokenizer.save)
    body = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name or directory.resolve().name,
        "architecture": arch,
        "model": config.to_dict(),
        "params": sum(p.numel() for p in model.parameters()),
        "storage_dtype": dtype,
        "files": {WEIGHTS_FILE: _digest(directory / WEIGHTS_FILE)},
        "vocab": {"size": tokenizer.vocab_size, "fingerprint": tokenizer.fingerprint},
        "meta": meta or {},
    }
    if arch == "sm1":
        floats = state_floats(config)
        body["state_floats"] = {"ssm": floats.ssm, "conv": floats.conv, "total": floats.total}
    text = json.dumps(body, indent=2, sort_keys=False)
    _write_atomic(directory / CONFIG_FILE, lambda p: Path(p).write_text(text + "\n"))
    return directory


def load(path: str | Path | None = None, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load and check a checkpoint folder; None means the shipped default (see `resolve_default`)."""
    directory = resolve_default() if path is None else Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    body = _read_config(directory)
    _check_file(directory, WEIGHTS_FILE, body["files"].get(WEIGHTS_FILE))
    tokenizer = _read_vocab(directory, body)
    arch = body["architecture"]
    try:
        config, model = build_model(arch, body["model"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{directory / CONFIG_FILE}: the model config is not valid for {arch}: {e}") from e
    _load_weights(directory / WEIGHTS_FILE, model)
    return LoadedCheckpoint(
        model=model.to(device).eval(),
        config=config,
        tokenizer=tokenizer,
        name=body["name"],
        path=directory,
        architecture=arch,
        meta=body.get("meta", {}),
    )


def resolve_default(checkpoints_dir: Path | None = None) -> Path:
    """The folder named in checkpoints/DEFAULT, or the only checkpoint folder under checkpoints/."""
    root = checkpoints_dir or default_checkpoints_dir()
    marker = root / DEFAULT_FILE
    if marker.is_file():
        return root / marker.read_text().strip()
    found = sorted(p for p in root.glob(f"*/{CONFIG_FILE}")) if root.is_dir() else []
    if len(found) == 1:
        return found[0].parent
    if not found:
        raise CheckpointError(f"no checkpoint found under {root} (expected a folder with {CONFIG_FILE})")
    names = ", ".join(p.parent.name for p in found)
    raise CheckpointError(f"several checkpoints under {root} ({names}): name one in {marker}")


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict without aliases (tied embedding and head are one tensor): safetensors refuses shared memory."""
    seen: set[int] = set()
    out = {}
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        out[k] = v
    return out


def _stored(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Matrices in the storage dtype; vectors (A_log, D, biases, norms) stay fp32: few bytes, sensitive values."""
    t = t.detach().to("cpu")
    return (t.to(dtype) if t.is_floating_point() and t.dim() >= 2 else t).contiguous()


def _read_config(directory: Path) -> dict:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a checkpoint folder")
    try:
        body = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}): the file is damaged") from e
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an SM1 checkpoint config (no \"format\": \"{FORMAT}\")")
    if body.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {body.get('format_version')} is not supported "
            f"(this code reads version {FORMAT_VERSION})"
        )
    missing = [k for k in ("name", "architecture", "model", "files", "vocab") if k not in body]
    if missing:
        raise CheckpointError(f"{path} lacks the field(s) {', '.join(missing)}")
    if body["architecture"] not in ARCHITECTURES:
        raise CheckpointError(f"{path}: unknown architecture {body['architecture']!r}")
    return body


def _check_file(directory: Path, fname: str, expected: dict | None) -> None:
    path = directory / fname
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    if expected is None:
        raise CheckpointError(f"{directory / CONFIG_FILE} records no digest for {fname}")
    got = _digest(path)
    if got["bytes"] != expected["bytes"]:
        what = "truncated" if got["bytes"] < expected["bytes"] else "longer than it should be"
        raise CheckpointError(f"{path} is {what}: {got['bytes']} bytes, config.json expects {expected['bytes']}")
    if got["sha256"] != expected["sha256"]:
        raise CheckpointError(
            f"{path} does not match the SHA-256 recorded in config.json: the file was modified or replaced"
        )


def _read_vocab(directory: Path, body: dict) -> Tokenizer:
    """The vocabulary, checked by meaning (size and fingerprint of the token list), not by bytes."""
    path = directory / VOCAB_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        tokenizer = Tokenizer.load(path)
    except VocabError as e:
        raise CheckpointError(f"{path} is not a vocabulary this code can use: {e}") from e
    vocab_size = body["model"].get("vocab_size")
    if tokenizer.vocab_size != vocab_size:
        raise CheckpointError(
            f"{path} has {tokenizer.vocab_size} tokens but the model in config.json expects {vocab_size}"
        )
    if tokenizer.fingerprint != body["vocab"].get("fingerprint"):
        raise CheckpointError(
            f"{path} is vocabulary {tokenizer.fingerprint}, but the model was trained on "
            f"{body['vocab'].get('fingerprint')}: same size, different tokens"
        )
    return tokenizer


def _load_weights(path: Path, model: nn.Module) -> None:
    try:
        stored = load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    load_tensors(model, stored, source=f"{path} (with the model in config.json)")


def load_tensors(model: nn.Module, stored: dict[str, torch.Tensor], source: str) -> None:
    """Copy `stored` (named as in `unique_state_dict`) into `model`, refusing missing, extra or misshapen tensors."""
    expected = unique_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source}: tensors do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in expected.items():
        if stored[k].shape != v.shape:
            raise CheckpointError(
                f"{source}: tensor {k} has shape {tuple(stored[k].shape)}, the model needs {tuple(v.shape)}"
            )
    with torch.no_grad():
        for k, v in expected.items():  # aliases (tied weights) share storage with these, so they follow
            v.copy_(stored[k].to(v.dtype))


def _digest(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(str(tmp))
    os.replace(tmp, path)
