"""The GPT baseline: the KV-cache step computes the same function as the whole-sequence forward."""

import pytest
import torch

from sm1.gpt import GPT, GPTConfig


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, d_model=32, n_layer=2, n_head=4, max_len=64)).eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 50, (3, 20), generator=torch.Generator().manual_seed(1))


def test_token_by_token_generation_matches_the_whole_sequence(gpt, tokens):
    full, _ = gpt(tokens)
    cache = gpt.allocate_state(batch=3)
    stepped = torch.stack([gpt.step(tokens[:, t], cache) for t in range(tokens.shape[1])], dim=1)
    torch.testing.assert_close(stepped, full, rtol=1e-4, atol=1e-5)


def test_prefill_in_chunks_then_step_matches_the_whole_sequence(gpt, tokens):
    full, _ = gpt(tokens)
    cache = gpt.allocate_state(batch=3)
    first, _ = gpt(tokens[:, :7], cache)
    second, _ = gpt(tokens[:, 7:15], cache)
    last = gpt.step(tokens[:, 15], cache)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full[:, :15], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last, full[:, 15], rtol=1e-4, atol=1e-5)
    assert cache.length == 16


def test_a_later_token_never_changes_earlier_logits(gpt, tokens):
    changed = tokens.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 50
    before, _ = gpt(tokens)
    after, _ = gpt(changed)
    torch.testing.assert_close(after[:, :12], before[:, :12])
    assert not torch.allclose(after[:, 12:], before[:, 12:])


def test_the_kv_cache_grows_with_context_and_refuses_overflow(gpt, tokens):
    cache = gpt.allocate_state(batch=1, max_len=24)
    gpt(tokens[:1, :10], cache)
    ten = cache.nbytes()
    gpt(tokens[:1, 10:20], cache)
    assert cache.nbytes() == 2 * ten > 0
    with pytest.raises(ValueError, match="holds 24 tokens"):
        gpt(tokens[:1, :10], cache)


def test_config_round_trips_through_a_dict():
    cfg = GPTConfig(vocab_size=10, d_model=16, n_layer=1, n_head=2)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="heads"):
        GPTConfig(vocab_size=10, d_model=30, n_layer=1, n_head=4)
