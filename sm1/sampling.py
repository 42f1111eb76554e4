"""Choosing the next token: temperature, top-k, top-p, constraint masks, one seeded generator per session.

Everything runs batched over the sessions of a tick, yet each row's choice depends only on that row (its
logits, its params, its own uniform draw), never on which other sessions share the batch: the nucleus is
found by sorting only the rows that ask for top-p, and the token is drawn by inverse CDF over the kept
tokens in vocabulary order. So the same seed, params and prompt give the same notes whatever else runs
(the engine keeps the logits themselves batch-independent: see BatchedStep).

Notes are written well-formed: after a pitch only a velocity may follow, after that only a duration (the
decoder would drop anything else, and the token would be wasted). Constraints are masks over the
vocabulary built from the tokenizer's lookup tables (`kind_of`, `pitch_of`, `program_of`): a pitch range
and a key/scale for melodic pitches, a set of allowed programs (and drums), and a cap on notes started
per beat. A mask never empties a row: if it would, the row is left unmasked.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import astuple, dataclass
from functools import lru_cache
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from sm1.tokenizer import (
    DRUM,
    DRUMS_PROGRAM,
    DURATION,
    PITCH,
    PROGRAM,
    SPECIAL,
    VELOCITY,
    StreamDecoder,
    Tokenizer,
)

NOTE_NAMES = {"C": 0, "C#": 1, "Db": 1, "D": 2, "D#": 3, "Eb": 3, "E": 4, "F": 5, "F#": 6, "Gb": 6, "G": 7,
              "G#": 8, "Ab": 8, "A": 9, "A#": 10, "Bb": 10, "B": 11}  # fmt: skip
SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "pentatonic_major": (0, 2, 4, 7, 9),
    "pentatonic_minor": (0, 3, 5, 7, 10),
    "blues": (0, 3, 5, 6, 7, 10),
    "chromatic": tuple(range(12)),
}
Key = Literal["C", "C#", "Db", "D", "D#", "Eb", "E", "F", "F#", "Gb", "G", "G#", "Ab", "A", "A#", "Bb", "B"]
Scale = Literal["major", "minor", "harmonic_minor", "dorian", "mixolydian", "pentatonic_major", "pentatonic_minor",
                "blues", "chromatic"]  # fmt: skip
MAX_SEED = 2**63 - 1


class Constraints(BaseModel):
    """What the sampler may play. Frozen (hashable), so the masks of one set of constraints are built once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pitch_min: int = Field(0, ge=0, le=127, description="lowest melodic pitch (drums are not affected)")
    pitch_max: int = Field(127, ge=0, le=127, description="highest melodic pitch")
    key: Key | None = Field(None, description="tonic of `scale`; melodic pitches outside the scale are not played")
    scale: Scale | None = Field(None, description="scale on `key` (default major when a key is given)")
    programs: tuple[int, ...] | None = Field(
        None, description="General MIDI programs (0-127) melodic notes may use; null = any"
    )
    drums: bool = Field(True, description="whether drum notes may be played")
    max_notes_per_beat: float | None = Field(
        None, gt=0, le=256, description="cap on notes started within any one beat; null = no cap"
    )

    @model_validator(mode="after")
    def _check(self) -> Constraints:
        if self.pitch_min > self.pitch_max:
            raise ValueError(f"pitch_min {self.pitch_min} is above pitch_max {self.pitch_max}")
        if self.scale is not None and self.key is None:
            raise ValueError("scale needs a key (e.g. key 'C', scale 'minor')")
        if self.programs is not None:
            if not self.programs:
                raise ValueError("programs must list at least one program (or be null for any)")
            bad = [p for p in self.programs if not 0 <= p <= 127]
            if bad:
                raise ValueError(f"programs must be General MIDI programs 0..127, got {bad}")
        return self

    def pitch_classes(self) -> tuple[int, ...] | None:
        if self.key is None:
            return None
        tonic = NOTE_NAMES[self.key]
        return tuple(sorted((tonic + step) % 12 for step in SCALES[self.scale or "major"]))


class SamplingParams(BaseModel):
    """How one session samples. A temperature of 0 is greedy; top_k 0 and top_p 1 switch those filters off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(1.0, ge=0.0, le=5.0)
    top_k: int = Field(0, ge=0, le=100_000)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="null: the server picks one and reports it")
    constraints: Constraints = Field(default_factory=Constraints)

    def with_seed(self) -> SamplingParams:
        """These params with a concrete seed (a random one if none was given), so a run can be repeated."""
        return self if self.seed is not None else self.model_copy(update={"seed": secrets.randbits(63)})

    def updated(self, changes: dict[str, Any]) -> SamplingParams:
        """A validated copy with some fields replaced (a `constraints` given replaces the whole set)."""
        return SamplingParams.model_validate({**self.model_dump(), **changes})


@dataclass(frozen=True)
class ConstraintMasks:
    """The four masks one set of constraints needs; which applies depends on the stream's position."""

    free: Tensor  # (V,) bool: what may come next in general
    no_notes: Tensor  # (V,) bool: `free` without note starts (the density cap is reached)
    no_pitch: Tensor  # (V,) bool: `free` without melodic pitches (drums still allowed)
    switch_program: Tensor  # (V,) bool: allowed program switches (and drums): the current program is not allowed
    velocity: Tensor  # (V,) bool: a pitch was written, its velocity comes next
    duration: Tensor  # (V,) bool: then its duration


class VocabMasks:
    """Builds (and caches) constraint masks for one tokenizer on one device."""

    def __init__(self, tokenizer: Tokenizer, device: torch.device | str = "cpu") -> None:
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        kind = torch.as_tensor(tokenizer.kind_of)
        self.kinds: list[int] = tokenizer.kind_of.tolist()
        self._is_velocity, self._is_duration = kind == VELOCITY, kind == DURATION
        self._pitch = torch.as_tensor(tokenizer.pitch_of)
        self._program = torch.as_tensor(tokenizer.program_of)
        self._is_pitch, self._is_drum = kind == PITCH, kind == DRUM
        self._is_program, self._is_special = kind == PROGRAM, kind == SPECIAL
        self._build = lru_cache(maxsize=256)(self._build_uncached)

    def masks(self, constraints: Constraints) -> ConstraintMasks:
        return self._build(constraints)

    def _build_uncached(self, c: Constraints) -> ConstraintMasks:
        # bos/pad/eos are never sampled: streams do not end by themselves, clips end at their length;
        # velocities and durations only come as the 2nd and 3rd token of a note (see `velocity`, `duration`)
        free = ~self._is_special & ~self._is_velocity & ~self._is_duration
        pitch_ok = (self._pitch >= c.pitch_min) & (self._pitch <= c.pitch_max)
        classes = c.pitch_classes()
        if classes is not None:
            pitch_ok &= torch.isin(self._pitch % 12, torch.tensor(classes))
        free &= ~self._is_pitch | pitch_ok
        program_ok = torch.ones(DRUMS_PROGRAM + 1, dtype=torch.bool)
        if c.programs is not None:
            program_ok[:DRUMS_PROGRAM] = False
            program_ok[list(c.programs)] = True
        program_ok[DRUMS_PROGRAM] = c.drums
        free &= ~self._is_program | program_ok[self._program.clamp(min=0)]
        if not c.drums:
            free &= ~self._is_drum
        masks = ConstraintMasks(
            free=free,
            no_notes=free & ~self._is_pitch & ~self._is_drum,
            no_pitch=free & ~self._is_pitch,
            switch_program=free & ((self._is_program & (self._program != DRUMS_PROGRAM)) | self._is_drum),
            velocity=self._is_velocity,
            duration=self._is_duration,
        )
        return ConstraintMasks(*(m.to(self.device) for m in astuple(masks)))


UNIFORM_BLOCK = 64  # draws taken from a session's generator at once


class SessionSampler:
    """One session's sampling state: params, its own generator, the note being written and the onsets
    the density cap counts.

    The generator's draws are taken UNIFORM_BLOCK at a time (one torch call costs about what 50 draws do):
    torch's CPU generator fills a float64 tensor one draw after another, so the draws are the very same as
    one by one, and the state a snapshot holds is the generator's as if they had been (tests check both).
    """

    def __init__(self, params: SamplingParams, masks: VocabMasks) -> None:
        self._vocab = masks
        self.generator = torch.Generator()
        self._block: list[float] = []  # draws taken from the generator, not yet used
        self._used = 0
        self._block_start = self.generator.get_state()  # the generator's state where the block began
        self.onsets: deque[int] = deque()  # ticks of recent generated note starts (for max_notes_per_beat)
        self.expect: int | None = None  # VELOCITY or DURATION while a note is half written
        self.set_params(params, reseed=True)

    def set_params(self, params: SamplingParams, reseed: bool) -> None:
        """Apply params from the next token on; `reseed` restarts the generator from params.seed."""
        self.params = params.with_seed()
        self.masks = self._vocab.masks(self.params.constraints)
        if reseed:
            self.generator.manual_seed(self.params.seed)
            self._block, self._used = [], 0

    def uniform(self) -> float:
        """This session's next draw in [0, 1): one per sampled token, whatever the batch."""
        if self._used == len(self._block):
            self._block_start = self.generator.get_state()
            self._block = torch.rand(UNIFORM_BLOCK, generator=self.generator, dtype=torch.float64).tolist()
            self._used = 0
        self._used += 1
        return self._block[self._used - 1]

    def generator_state(self) -> bytes:
        """The generator's state after the draws used so far (not after the whole block taken)."""
        if self._used == len(self._block):
            return bytes(self.generator.get_state().numpy())
        g = torch.Generator()
        g.set_state(self._block_start)
        torch.rand(self._used, generator=g, dtype=torch.float64)
        return bytes(g.get_state().numpy())

    def allowed(self, decoder: StreamDecoder) -> Tensor:
        """The mask for the next token, given where the stream is."""
        if self.expect == VELOCITY:
            return self.masks.velocity
        if self.expect == DURATION:
            return self.masks.duration
        c = self.params.constraints
        if c.max_notes_per_beat is not None:
            self._forget_before(decoder.tick - decoder.tok.ticks_per_beat)
            if len(self.onsets) >= c.max_notes_per_beat:
                return self.masks.no_notes
        if c.programs is not None and decoder.at_note_boundary:
            program = decoder.program if decoder.program is not None and decoder.program >= 0 else 0
            if program not in c.programs:
                # melodic notes would play a program that is not allowed: switch first (drums may go on)
                return self.masks.switch_program
        return self.masks.free

    def observe(self, token: int, decoder: StreamDecoder) -> None:
        """Call with each sampled token before the decoder sees it (a note start counts at its onset)."""
        if self.params.constraints.max_notes_per_beat is not None and self._vocab.kinds[token] in (PITCH, DRUM):
            self.onsets.append(decoder.tick)
        self.follow(token)

    def follow(self, token: int) -> None:
        """Track the note being written, for sampled tokens and for input (prompt, a person's notes) alike."""
        kind = self._vocab.kinds[token]
        if kind in (PITCH, DRUM):
            self.expect = VELOCITY
        elif kind == VELOCITY and self.expect == VELOCITY:
            self.expect = DURATION
        else:
            self.expect = None

    def _forget_before(self, tick: int) -> None:
        while self.onsets and self.onsets[0] <= tick:
            self.onsets.popleft()

    def state_dict(self) -> dict[str, Any]:
        """JSON-able except `generator` (bytes)."""
        return {
            "params": self.params.model_dump(mode="json"),
            "generator": self.generator_state(),
            "onsets": list(self.onsets),
            "expect": self.expect,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.set_params(SamplingParams.model_validate(d["params"]), reseed=False)
        self.generator.set_state(torch.frombuffer(bytearray(d["generator"]), dtype=torch.uint8))
        self._block, self._used = [], 0
        self.onsets = deque(int(t) for t in d["onsets"])
        if d["expect"] not in (None, VELOCITY, DURATION):
            raise ValueError(f"sampler state: unknown expectation {d['expect']!r}")
        self.expect = d["expect"]


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """A small host tensor on `device` without waiting: a copy from pageable memory first waits for every
    kernel queued before it, and with several processes sharing a GPU each such wait can last a time slice."""
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def sample(
    logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor, uniforms: Tensor, allowed: Tensor
) -> Tensor:
    """One token per row.

    logits (B, V) float and allowed (B, V) bool on the device; the rows' params on the CPU: temperature,
    top_p (B,) float, top_k (B,) int64 (0 = off), uniforms (B,) float64 in [0, 1). Which rows filter, and
    how many tokens top-k keeps, is decided on the CPU, so on a GPU nothing here waits for the device (the
    caller's read of the tokens is a tick's one wait). Returns (B,) int64 on the device.
    """
    device, V = logits.device, logits.shape[1]
    greedy = temperature <= 0
    k_rows = ((top_k > 0) & (top_k < V) & ~greedy).nonzero().squeeze(1)
    p_rows = ((top_p < 1.0) & ~greedy).nonzero().squeeze(1)
    k = top_k[k_rows]
    k_max = int(k.max()) if len(k_rows) else 0
    divisor = torch.where(greedy, 1.0, temperature)
    divisor, top_p, uniforms, greedy, k_rows, p_rows, k = (
        to_device(t, device) for t in (divisor, top_p, uniforms, greedy, k_rows, p_rows, k)
    )

    allowed = allowed | ~allowed.any(dim=1, keepdim=True)  # a mask never empties a row
    x = logits.float().masked_fill(~allowed, float("-inf"))
    x = x / divisor.unsqueeze(1)
    keep = allowed.clone()
    if k_max:
        # the k-th largest value of each row is the same whatever k_max is: rows stay independent
        kth = x[k_rows].topk(k_max, dim=1).values.gather(1, (k - 1).unsqueeze(1))  # (b, 1)
        keep[k_rows] &= x[k_rows] >= kth

    probs = x.masked_fill(~keep, float("-inf")).softmax(dim=1)  # (B, V)
    if len(p_rows):
        # smallest set of most likely tokens whose mass reaches top_p; ties at the edge are all kept
        sorted_p = probs[p_rows].sort(dim=1, descending=True).values  # (b, V)
        before = sorted_p.cumsum(dim=1) - sorted_p
        n = (before < top_p[p_rows].unsqueeze(1)).sum(dim=1, keepdim=True)  # >= 1
        edge = sorted_p.gather(1, n - 1)
        probs[p_rows] = probs[p_rows].masked_fill(probs[p_rows] < edge, 0.0)

    cdf = probs.double().cumsum(dim=1)  # (B, V), vocabulary order
    target = (uniforms.to(cdf) * cdf[:, -1]).unsqueeze(1)
    drawn = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=V - 1)
    return torch.where(greedy, x.argmax(dim=1), drawn)
