"""Checkpoints: what is saved loads back as the same model; a damaged or foreign file is refused clearly."""

import json
import shutil

import pytest
import torch

from sm1.checkpoint import CheckpointError, load, resolve_default, save
from sm1.gpt import GPT, GPTConfig
from sm1.model import SM1, SM1Config
from sm1.tokenizer import Tokenizer, TokenizerConfig


@pytest.fixture
def copy(tiny_checkpoint, tmp_path):
    """A private copy of the tiny checkpoint that a test may damage."""
    return shutil.copytree(tiny_checkpoint, tmp_path / "ck")


def some_tokens(vocab_size):
    return torch.randint(0, vocab_size, (2, 24), generator=torch.Generator().manual_seed(3))


def test_a_saved_model_loads_back_with_the_same_logits(tmp_path):
    tok = Tokenizer.default()
    torch.manual_seed(1)
    model = SM1(SM1Config(vocab_size=tok.vocab_size, d_model=32, n_layer=2)).eval()
    save(tmp_path / "ck", model, tok, {"step": 7})
    ck = load(tmp_path / "ck")
    x = some_tokens(tok.vocab_size)
    torch.testing.assert_close(ck.model(x)[0], model(x)[0], rtol=0, atol=0)
    assert (ck.name, ck.meta, ck.tokenizer, ck.architecture) == ("ck", {"step": 7}, tok, "sm1")
    assert not ck.model.training
    assert ck.model.lm_head.weight is ck.model.embedding.weight  # still tied after loading


def test_bf16_storage_halves_the_file_and_loads_back_as_close_fp32(tmp_path):
    tok = Tokenizer.default()
    model = SM1(SM1Config(vocab_size=tok.vocab_size, d_model=64, n_layer=2)).eval()
    full = save(tmp_path / "fp32", model, tok) / "model.safetensors"
    half = save(tmp_path / "bf16", model, tok, dtype="bfloat16") / "model.safetensors"
    assert half.stat().st_size < 0.55 * full.stat().st_size
    ck = load(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in ck.model.parameters())
    torch.testing.assert_close(ck.model.layers[0].mixer.A_log, model.layers[0].mixer.A_log, rtol=0, atol=0)
    x = some_tokens(tok.vocab_size)
    torch.testing.assert_close(ck.model(x)[0], model(x)[0], rtol=0.05, atol=0.02)


def test_the_gpt_baseline_round_trips_too(tmp_path):
    tok = Tokenizer.default()
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, d_model=32, n_layer=2, n_head=2)).eval()
    ck = load(save(tmp_path / "gpt", model, tok))
    x = some_tokens(tok.vocab_size)
    assert ck.architecture == "gpt"
    torch.testing.assert_close(ck.model(x)[0], model(x)[0], rtol=0, atol=0)


def test_load_without_a_path_finds_the_default_checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    shutil.copytree(tiny_checkpoint, root / "only")
    monkeypatch.setenv("SM1_CHECKPOINTS", str(root))
    assert load().path == root / "only"  # the only folder there
    shutil.copytree(tiny_checkpoint, root / "other")
    with pytest.raises(CheckpointError, match=r"several checkpoints .*only, other.*DEFAULT"):
        load()
    (root / "DEFAULT").write_text("other\n")
    assert load().path == root / "other"


def test_an_empty_checkpoints_folder_says_nothing_was_found(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        resolve_default(tmp_path)


def test_a_missing_folder_or_file_is_named(copy, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nowhere")
    (copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing"):
        load(copy)


def test_a_missing_vocabulary_is_named(copy):
    (copy / "vocab.json").unlink()
    with pytest.raises(CheckpointError, match=r"vocab\.json is missing"):
        load(copy)


def test_a_truncated_weight_file_is_called_truncated(copy):
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated: 1000 bytes"):
        load(copy)


def test_an_edited_weight_file_is_refused(copy):
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"SHA-256.*modified or replaced"):
        load(copy)


def test_a_vocabulary_of_another_size_is_refused(copy):
    Tokenizer(TokenizerConfig(num_velocities=16)).save(copy / "vocab.json")
    with pytest.raises(CheckpointError, match=r"vocab\.json has 427 tokens but the model .* expects 443"):
        load(copy)


def test_a_vocabulary_of_the_same_size_but_other_tokens_is_refused(copy):
    Tokenizer(TokenizerConfig(pitch_range=(22, 110))).save(copy / "vocab.json")
    with pytest.raises(CheckpointError, match="same size, different tokens"):
        load(copy)


def test_a_config_that_does_not_fit_the_weights_is_refused(copy):
    config = json.loads((copy / "config.json").read_text())
    config["model"]["n_layer"] = 3
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"tensors do not fit: missing \['layers\.2\."):
        load(copy)
    config["model"]["n_layer"], config["model"]["d_model"] = 2, 48
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"has shape .* the model needs"):
        load(copy)


def test_a_damaged_or_foreign_config_is_refused(copy):
    path = copy / "config.json"
    good = path.read_text()
    path.write_text(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load(copy)
    path.write_text(json.dumps({**json.loads(good), "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99 is not supported"):
        load(copy)
    path.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(CheckpointError, match="not an SM1 checkpoint config"):
        load(copy)
    path.write_text(json.dumps({**json.loads(good), "model": {**json.loads(good)["model"], "colour": 1}}))
    with pytest.raises(CheckpointError, match=r"not valid for sm1.*colour"):
        load(copy)
