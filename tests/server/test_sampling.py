"""The sampler: filters do what their names say, rows never depend on each other, constraints hold."""

import pytest
import torch
from pydantic import ValidationError

from sm1.sampling import Constraints, SamplingParams, SessionSampler, VocabMasks, sample
from sm1.tokenizer import DRUM, PITCH, PROGRAM, TIME_SHIFT, VELOCITY, Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.default()


@pytest.fixture(scope="module")
def vocab(tok):
    return VocabMasks(tok)


def draw(logits, uniforms, temperature=1.0, top_k=0, top_p=1.0, allowed=None):
    """Sample one row of logits once per uniform."""
    B, V = len(uniforms), logits.shape[-1]
    return sample(
        logits.expand(B, V),
        temperature=torch.full((B,), float(temperature)),
        top_k=torch.full((B,), top_k),
        top_p=torch.full((B,), float(top_p)),
        uniforms=torch.as_tensor(uniforms, dtype=torch.float64),
        allowed=torch.ones(B, V, dtype=torch.bool) if allowed is None else allowed.expand(B, V),
    ).tolist()


GRID = [(i + 0.5) / 1000 for i in range(1000)]  # uniforms evenly over [0, 1)
PROBS = torch.tensor([0.05, 0.5, 0.15, 0.3])


def test_sampling_follows_the_distribution():
    counts = torch.bincount(torch.tensor(draw(PROBS.log(), GRID)), minlength=4).float() / len(GRID)
    assert torch.allclose(counts, PROBS, atol=2e-3)


def test_temperature_zero_is_greedy():
    assert set(draw(PROBS.log(), GRID, temperature=0.0)) == {1}


def test_top_k_keeps_only_the_k_most_likely():
    assert set(draw(PROBS.log(), GRID, top_k=2)) == {1, 3}


def test_top_p_keeps_the_smallest_set_reaching_p():
    assert set(draw(PROBS.log(), GRID, top_p=0.8)) == {1, 3}
    assert set(draw(PROBS.log(), GRID, top_p=0.81)) == {1, 3, 2}


def test_masked_tokens_are_never_drawn_and_a_mask_never_empties_a_row():
    allowed = torch.tensor([True, False, True, False])
    assert set(draw(PROBS.log(), GRID, allowed=allowed)) == {0, 2}
    assert set(draw(PROBS.log(), GRID, allowed=torch.zeros(4, dtype=torch.bool))) == {0, 1, 2, 3}


def test_each_row_is_sampled_as_if_it_were_alone():
    g = torch.Generator().manual_seed(0)
    B, V = 16, 443
    logits = torch.randn(B, V, generator=g) * 3
    args = dict(
        temperature=torch.rand(B, generator=g) * 1.5,
        top_k=torch.randint(0, 50, (B,), generator=g),
        top_p=torch.rand(B, generator=g) * 0.5 + 0.5,
        uniforms=torch.rand(B, generator=g, dtype=torch.float64),
        allowed=torch.rand(B, V, generator=g) > 0.3,
    )
    args["temperature"][3] = 0.0
    together = sample(logits, **args)
    alone = [sample(logits[i : i + 1], **{k: v[i : i + 1] for k, v in args.items()}).item() for i in range(B)]
    assert together.tolist() == alone


def test_draws_taken_in_blocks_are_the_draws_one_by_one_and_so_is_the_saved_state(vocab):
    """A session's generator gives its draws UNIFORM_BLOCK at a time; what a seed means must not change."""
    sampler = SessionSampler(SamplingParams(seed=42), vocab)
    g = torch.Generator().manual_seed(42)
    one_by_one = [float(torch.rand((), generator=g, dtype=torch.float64)) for _ in range(150)]
    assert [sampler.uniform() for _ in range(150)] == one_by_one
    for used in (0, 1, 63, 64, 65, 100):
        s = SessionSampler(SamplingParams(seed=7), vocab)
        g = torch.Generator().manual_seed(7)
        for _ in range(used):
            s.uniform()
            torch.rand((), generator=g, dtype=torch.float64)
        state = s.state_dict()
        assert state["generator"] == bytes(g.get_state().numpy())
        restored = SessionSampler(SamplingParams(), vocab)
        restored.load_state_dict(state)
        assert [restored.uniform() for _ in range(70)] == [s.uniform() for _ in range(70)]


def test_params_are_validated_with_clear_messages():
    with pytest.raises(ValidationError, match="pitch_min 80 is above pitch_max 60"):
        Constraints(pitch_min=80, pitch_max=60)
    with pytest.raises(ValidationError, match="scale needs a key"):
        Constraints(scale="minor")
    with pytest.raises(ValidationError, match=r"0\.\.127"):
        Constraints(programs=[3, 200])
    with pytest.raises(ValidationError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        SamplingParams(temprature=1.0)


def test_params_update_keeps_what_is_not_changed():
    p = SamplingParams(temperature=0.7, seed=5).updated({"top_k": 10})
    assert (p.temperature, p.top_k, p.seed) == (0.7, 10, 5)
    assert SamplingParams().with_seed().seed is not None


def test_pitch_range_and_scale_limit_melodic_pitches_only(tok, vocab):
    free = vocab.masks(Constraints(pitch_min=60, pitch_max=72, key="D", scale="minor")).free
    pitches = {int(tok.pitch_of[i]) for i in range(tok.vocab_size) if free[i] and tok.kind_of[i] == PITCH}
    assert pitches == {60, 62, 64, 65, 67, 69, 70, 72}  # D minor: D E F G A Bb C
    drums = [i for i in range(tok.vocab_size) if tok.kind_of[i] == DRUM]
    assert free[drums].all()


def test_programs_and_drums_can_be_forbidden(tok, vocab):
    free = vocab.masks(Constraints(programs=[0, 33], drums=False)).free
    programs = {int(tok.program_of[i]) for i in range(tok.vocab_size) if free[i] and tok.kind_of[i] == PROGRAM}
    assert programs == {0, 33}
    assert not free[tok.kind_of == DRUM].any()


def feed(sampler, dec, tok, names):
    for name in names:
        t = tok.id_of(name)
        sampler.observe(t, dec)
        dec.feed(t)


def test_a_note_is_written_pitch_velocity_duration(tok, vocab):
    s, dec = SessionSampler(SamplingParams(seed=1), vocab), tok.decoder()
    feed(s, dec, tok, ["Pitch_60"])
    assert set(tok.kind_of[s.allowed(dec).numpy()]) == {VELOCITY}
    feed(s, dec, tok, ["Velocity_95"])
    assert all(tok.tokens[i].startswith("Duration_") for i in s.allowed(dec).nonzero().flatten().tolist())


def test_density_cap_stops_note_starts_until_the_clock_moves_on(tok, vocab):
    s, dec = SessionSampler(SamplingParams(constraints=Constraints(max_notes_per_beat=2)), vocab), tok.decoder()
    feed(s, dec, tok, ["Pitch_60", "Velocity_95", "Duration_1.0.8", "Pitch_64", "Velocity_95", "Duration_1.0.8"])
    kinds = set(tok.kind_of[s.allowed(dec).numpy()])
    assert PITCH not in kinds and DRUM not in kinds and TIME_SHIFT in kinds
    feed(s, dec, tok, ["TimeShift_1.0.8"])
    assert PITCH in set(tok.kind_of[s.allowed(dec).numpy()])


def test_a_forbidden_current_program_is_switched_before_any_melodic_note(tok, vocab):
    s, dec = SessionSampler(SamplingParams(constraints=Constraints(programs=[33], drums=False)), vocab), tok.decoder()
    assert [tok.tokens[i] for i in s.allowed(dec).nonzero().flatten().tolist()] == ["Program_33"]
    feed(s, dec, tok, ["Program_33"])
    assert PITCH in set(tok.kind_of[s.allowed(dec).numpy()])


def test_the_same_seed_gives_the_same_draws_and_state_dict_resumes_them(vocab):
    a, b = SessionSampler(SamplingParams(seed=42), vocab), SessionSampler(SamplingParams(seed=42), vocab)
    assert [a.uniform() for _ in range(5)] == [b.uniform() for _ in range(5)]
    saved = a.state_dict()
    ahead = [a.uniform() for _ in range(5)]
    c = SessionSampler(SamplingParams(seed=7), vocab)
    c.load_state_dict(saved)
    assert [c.uniform() for _ in range(5)] == ahead
