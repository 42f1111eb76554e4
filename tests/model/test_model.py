"""forward (whole sequence) and step (one token) are the same function, with d_state=1 and 16."""

import pytest
import torch

from sm1.model import SM1, SM1Config

TOL = 1e-4  # max abs logit difference in fp32


def make_model(d_state: int = 1, seed: int = 0) -> SM1:
    torch.manual_seed(seed)
    model = SM1(SM1Config(vocab_size=61, d_model=48, n_layer=3, d_state=d_state)).eval()
    # push dt and the gates away from their init so the test covers a trained-looking model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def tokens(bsz: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 61, (bsz, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("d_state", [1, 16])
def test_stepping_token_by_token_gives_the_forward_logits(d_state):
    model, toks = make_model(d_state), tokens(3, 40)
    with torch.no_grad():
        logits, final = model(toks)
        state = model.allocate_state(3)
        stepped = torch.stack([model.step(toks[:, t], state) for t in range(toks.shape[1])], dim=1)
    assert (logits - stepped).abs().max() <= TOL
    assert logits.abs().max() > 1e-2  # a real signal, not two zeros agreeing
    assert torch.allclose(final.ssm, state.ssm, atol=TOL) and torch.allclose(final.conv, state.conv, atol=TOL)


@pytest.mark.parametrize("d_state", [1, 16])
def test_prefill_with_forward_then_step_continues_the_same_sequence(d_state):
    model, toks = make_model(d_state), tokens(2, 30)
    with torch.no_grad():
        full, _ = model(toks)
        _, state = model(toks[:, :17])
        stepped = torch.stack([model.step(toks[:, t], state) for t in range(17, 30)], dim=1)
    assert (full[:, 17:] - stepped).abs().max() <= TOL


def test_forward_in_chunks_carries_both_ssm_and_conv_state():
    model, toks = make_model(), tokens(2, 50)
    with torch.no_grad():
        full, _ = model(toks)
        state, parts = None, []
        for lo, hi in [(0, 2), (2, 19), (19, 50)]:  # a chunk shorter than the conv window too
            logits, state = model(toks[:, lo:hi], state)
            parts.append(logits)
    assert (full - torch.cat(parts, dim=1)).abs().max() <= TOL


def test_step_on_pool_slots_reads_and_writes_only_those_slots():
    model, toks = make_model(), tokens(6, 12)
    pool = model.allocate_state(6)
    with torch.no_grad():
        for t in range(8):
            model.step(toks[:, t], pool)  # give every slot a distinct history
        slots = torch.tensor([4, 1])
        alone = pool.select(slots)
        untouched = pool.select(torch.tensor([0, 2, 3, 5]))
        expected = model.step(toks[slots, 8], alone)
        got = model.step(toks[slots, 8], pool, slots=slots)
    assert torch.equal(got, expected)
    assert torch.equal(pool.select(slots).ssm, alone.ssm) and torch.equal(pool.select(slots).conv, alone.conv)
    rest = pool.select(torch.tensor([0, 2, 3, 5]))
    assert torch.equal(rest.ssm, untouched.ssm) and torch.equal(rest.conv, untouched.conv)


def test_training_gradients_reach_every_parameter():
    model, toks = make_model().train(), tokens(2, 70)
    logits, _ = model(toks[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 61), toks[:, 1:].reshape(-1))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_config_round_trips_and_rejects_unknown_fields():
    cfg = SM1Config(vocab_size=443, d_model=256, n_layer=8)
    assert SM1Config.from_dict(cfg.to_dict()) == cfg
    assert cfg.dt_rank == 16 and cfg.d_inner == 512
    with pytest.raises(ValueError, match="unknown SM1Config fields"):
        SM1Config.from_dict({**cfg.to_dict(), "n_heads": 4})


def test_weights_in_bf16_keep_the_ssm_state_in_fp32():
    model, toks = make_model(), tokens(2, 9)
    model = model.to(torch.bfloat16)
    state = model.allocate_state(2)
    with torch.no_grad():
        logits, final = model(toks)
        model.step(toks[:, 0], state)
    assert final.ssm.dtype == torch.float32 and state.ssm.dtype == torch.float32
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
