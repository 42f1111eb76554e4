"""Fixtures shared by every test area."""

import pytest
import torch

from sm1.checkpoint import save
from sm1.model import SM1, SM1Config
from sm1.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of a tiny, randomly initialised SM1 checkpoint (d_model 32, 2 layers), written with `save`."""
    tokenizer = Tokenizer.default()
    torch.manual_seed(0)
    model = SM1(SM1Config(vocab_size=tokenizer.vocab_size, d_model=32, n_layer=2))
    path = tmp_path_factory.mktemp("checkpoints") / "tiny"
    return save(path, model, tokenizer, {"note": "random weights, for tests"}, name="tiny")
