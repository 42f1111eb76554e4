"""The engine: batched sessions that behave as if each ran alone; snapshot, restore, fork, reset; pacing."""

import pytest
import torch

from sm1.checkpoint import load
from sm1.engine import ClipLength, Engine, EngineFull, SnapshotError
from sm1.midi import read_midi
from sm1.model import SM1, SM1Config
from sm1.pacing import Pacing
from sm1.sampling import Constraints, SamplingParams
from sm1.tokenizer import Tokenizer

MIDI = "/work/shared/midi"


@pytest.fixture(scope="module")
def ck(tiny_checkpoint):
    return load(tiny_checkpoint)


@pytest.fixture
def engine(ck):
    return Engine(ck.model, ck.tokenizer, capacity=8)


@pytest.fixture(scope="module")
def prompt(ck):
    return ck.tokenizer.encode(read_midi(f"{MIDI}/Aicha.mid"))[:600]


def run(engine, sessions, ticks):
    """Tokens per session over `ticks` ticks of the whole batch (after any prefill)."""
    out = {s: [] for s in sessions}
    while engine.has_pending_input:
        engine.tick([])
    for _ in range(ticks):
        for g in engine.tick(sessions):
            out[g.session].append(g.token)
    return [out[s] for s in sessions]


def test_the_same_seed_params_and_prompt_give_the_same_clip(engine, prompt):
    params = SamplingParams(seed=11, temperature=0.9, top_p=0.95)
    a = engine.generate(prompt, params, ClipLength(beats=16))
    b = engine.generate(prompt, params, ClipLength(beats=16))
    c = engine.generate(prompt, params.updated({"seed": 12}), ClipLength(beats=16))
    assert a.events and a.events == b.events and a.seed == 11
    assert c.events != a.events


def traced(engine, s, others, ticks, releases):
    """(token, logits after it) of session `s` over `ticks` ticks beside `others`; at tick t, `releases[t]`
    of the others leave (so the batch shrinks through sizes on both sides of the padding)."""
    out = []
    for t in range(ticks):
        for o in others[: releases.get(t, 0)]:
            engine.release(o)
        others = others[releases.get(t, 0) :]
        out += [(g.token, engine.logits[s.slot].clone()) for g in engine.tick([*others, s]) if g.session is s]
    return out


@pytest.mark.parametrize("checkpoint", ["tiny", "shipped"])
@pytest.mark.parametrize("budget", [32, 4096], ids=["chunks-alone", "chunks-together"])
def test_a_session_gives_the_same_bits_whatever_else_runs(checkpoint, budget, tiny_checkpoint, prompt):
    """With a budget of 4096 the crowd's 64-token chunks are read in one forward with the session's own."""
    ck = load(tiny_checkpoint if checkpoint == "tiny" else None)
    engine = Engine(ck.model, ck.tokenizer, capacity=40, prefill_chunk=64, prefill_budget=budget)
    params = SamplingParams(seed=3)
    s = engine.admit(prompt, params)
    alone = traced(engine, s, [], 150, {})
    engine.release(s)
    crowd = [engine.admit(prompt[: 10 * i] or None, SamplingParams(seed=100 + i, temperature=0.5)) for i in range(30)]
    s = engine.admit(prompt, params)  # prefilled while the crowd waits: other chunks of the budget each tick
    beside = traced(engine, s, crowd, 300, {40: 10, 80: 12, 110: 7})  # batch 31 -> 21 -> 9 -> 2 -> 1
    beside = beside[: len(alone)]
    assert len(alone) == len(beside) > 100
    assert [t for t, _ in beside] == [t for t, _ in alone]
    different = [i for i, ((_, a), (_, b)) in enumerate(zip(alone, beside, strict=True)) if not torch.equal(a, b)]
    assert not different, f"logits differ in their bits from token {different[0]} on"


def test_a_long_prompt_is_prefilled_in_chunks_while_others_keep_getting_tokens(ck):
    engine = Engine(ck.model, ck.tokenizer, capacity=4, prefill_chunk=64, prefill_budget=64)
    busy = engine.admit(None, SamplingParams(seed=1))
    engine.tick([busy])  # reads its bos: from now on it waits for a token every tick
    long = engine.admit(ck.tokenizer.encode(read_midi(f"{MIDI}/Funkytown.mid"))[:2000], SamplingParams(seed=2))
    ticks_to_prefill = 0
    while long.pending:
        produced = [g.session for g in engine.tick([busy, long])]
        assert produced == ([busy] if long.pending else [busy, long])
        ticks_to_prefill += 1
    assert ticks_to_prefill >= 2000 // 64


def test_chunks_of_one_length_are_read_together_and_short_ones_alone(ck, prompt):
    engine = Engine(ck.model, ck.tokenizer, capacity=8, prefill_chunk=64, prefill_budget=4096)
    reads = []
    read = engine._read
    engine._read = lambda group, chunk: (reads.append(tuple(chunk.shape)), read(group, chunk))
    for n in (200, 200, 200, 140, 10, 10):  # chunks 64 64 64 8 | 64 64 64 8 | 64 64 64 8 | 64 64 12 | 10 | 10
        engine.admit(prompt[:n], SamplingParams(seed=n))
    engine.tick([])
    assert not engine.has_pending_input
    # round robin: the first waiting session's chunk and every other of its length (16 or more), then the next
    assert reads == [(4, 64), (1, 10), (1, 10), (4, 64), (3, 64), (1, 12), (1, 8), (1, 8), (1, 8)]


def test_snapshot_restores_exactly_even_in_another_engine(ck, engine, prompt):
    s = engine.admit(prompt, SamplingParams(seed=5, constraints=Constraints(max_notes_per_beat=4)))
    run(engine, [s], 40)
    blob = engine.snapshot(s, {"seq": 17})
    [after] = run(engine, [s], 120)
    other = Engine(load(ck.path).model, ck.tokenizer, capacity=2)
    restored, extra = other.restore(blob)
    assert extra == {"seq": 17}
    assert restored.params == s.params and restored.token_index == 40
    assert run(other, [restored], 120) == [after]


def test_damaged_or_foreign_snapshots_are_refused_with_a_reason(engine, prompt):
    s = engine.admit(prompt, SamplingParams(seed=5))
    blob = engine.snapshot(s)
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0xFF
    with pytest.raises(SnapshotError, match="damaged"):
        engine.restore(bytes(flipped))
    with pytest.raises(SnapshotError, match="too short"):
        engine.restore(blob[:10])
    with pytest.raises(SnapshotError, match="not an SM1 session snapshot"):
        engine.restore(b"MThd" + blob[4:])
    tok = Tokenizer.default()
    foreign = Engine(SM1(SM1Config(vocab_size=tok.vocab_size, d_model=32, n_layer=2)), tok, capacity=1)
    with pytest.raises(SnapshotError, match="another checkpoint"):
        foreign.restore(blob)
    assert engine.active == 1  # nothing leaked


def test_fork_gives_an_independent_copy(engine, prompt):
    parent = engine.admit(prompt, SamplingParams(seed=9))
    run(engine, [parent], 30)
    twin, other = engine.fork(parent), engine.fork(parent, seed=10)
    a, b, c = run(engine, [parent, twin, other], 80)
    assert a == b and a != c
    engine.set_params(twin, twin.params.updated({"temperature": 0.0}), reseed=False)
    a, b = run(engine, [parent, twin], 80)
    assert a != b


def test_reset_goes_back_to_the_end_of_the_prompt(engine, prompt):
    s = engine.admit(prompt, SamplingParams(seed=21))
    [first] = run(engine, [s], 60)
    engine.reset(s)
    assert s.token_index == 0
    assert run(engine, [s], 60) == [first]


def test_a_persons_notes_change_what_follows(ck, engine, prompt):
    a, b = engine.admit(prompt, SamplingParams(seed=4)), engine.admit(prompt, SamplingParams(seed=4))
    run(engine, [a, b], 20)
    assert engine.feed_notes(b, read_midi(f"{MIDI}/Mr._Blue_Sky.mid")[:12]) > 0  # played "now": at b's clock
    ta, tb = run(engine, [a, b], 60)
    assert ta != tb


def test_constraints_hold_over_a_whole_clip(engine):
    c = Constraints(pitch_min=48, pitch_max=60, key="A", scale="minor", programs=[40], drums=False)
    clip = engine.generate(None, SamplingParams(seed=2, constraints=c), ClipLength(beats=200))
    assert len(clip.events) >= 5
    assert all(48 <= e.pitch <= 60 and e.pitch % 12 in {9, 11, 0, 2, 4, 5, 7} for e in clip.events)
    assert {e.program for e in clip.events} == {40} and not any(e.is_drum for e in clip.events)


def test_the_pool_has_a_fixed_number_of_slots(engine):
    sessions = [engine.admit(None, SamplingParams()) for _ in range(8)]
    with pytest.raises(EngineFull):
        engine.admit(None, SamplingParams())
    engine.release(sessions[0])
    engine.admit(None, SamplingParams())
    assert engine.active == 8


def test_pacing_keeps_the_horizon_a_lookahead_ahead_of_playback():
    p = Pacing(tempo_bpm=120, lookahead_beats=2)
    p.anchor(4.0, now=100.0)
    assert p.position(101.0) == 6.0
    assert p.wants_tokens(horizon=7.9, now=101.0) and not p.wants_tokens(horizon=8.0, now=101.0)
    assert p.seconds_until_wanted(horizon=9.0, now=101.0) == pytest.approx(0.5)
    assert p.deadline(9.0) == pytest.approx(101.5)  # due at 102.5, sent a lookahead (1 s) earlier
    assert p.deadline(4.5) == 100.0  # never before the anchor
    p.pause(now=101.0)
    assert p.position(200.0) == 6.0 and not p.wants_tokens(horizon=0.0, now=200.0)
    p.resume(now=200.0)
    assert p.position(200.5) == 7.0
    assert Pacing(realtime=False).wants_tokens(horizon=1e9, now=0.0)


def test_the_writer_lead_starts_an_onset_a_little_before_the_lookahead_reaches_it():
    p = Pacing(tempo_bpm=120, lookahead_beats=2, lead_s=0.25)  # 0.5 beat
    p.anchor(0.0, now=0.0)
    assert p.wants_tokens(horizon=2.4, now=0.0) and not p.wants_tokens(horizon=2.5, now=0.0)
    assert p.seconds_until_wanted(horizon=3.5, now=0.0) == pytest.approx(0.5)
    assert p.deadline(3.5) == pytest.approx(0.75)  # the promise to the client does not move


def test_sessions_in_a_packed_run_of_slots_and_scattered_ones_get_the_same_tokens(ck, prompt):
    packed = Engine(ck.model, ck.tokenizer, capacity=8)
    a = [packed.admit(prompt, SamplingParams(seed=i)) for i in range(3)]  # slots 0, 1, 2: one view of the pool
    scattered = Engine(ck.model, ck.tokenizer, capacity=8)
    b = []
    for i in range(3):
        b.append(scattered.admit(prompt, SamplingParams(seed=i)))
        scattered.admit(None, SamplingParams())  # a hole after each: slots 0, 2, 4 (gathered by index)
    assert [s.slot for s in b] == [0, 2, 4]
    assert run(packed, a, 60) == run(scattered, b, 60)


def test_a_step_pads_to_16_rows_on_the_cpu_and_says_how_many_ride_free(ck):
    engine = Engine(ck.model, ck.tokenizer, capacity=40)
    assert [engine.free_rows(b) for b in (1, 5, 15, 16, 30)] == [15, 11, 1, 0, 0]
