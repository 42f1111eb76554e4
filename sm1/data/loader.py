"""Training batches from token shards (memory-mapped), with augmentation done here, not baked into shards.

Augmentations work on token ids directly:
* transposition: melodic Pitch ids move by a per-row number of semitones, chosen so that every pitch of
  the row stays in the vocabulary (drums never move);
* tempo (time stretch): with probability `stretch` a row is re-notated at twice the beat length (every
  TimeShift and Duration doubled). Doubling is the one stretch that is exact on the 1/8-beat grid (halving
  would need 1/16); a doubled shift beyond the largest token becomes two tokens, a doubled duration beyond
  12 beats is cut to 12, as the encoder does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from sm1.tokenizer import DURATION, PITCH, TIME_SHIFT, Tokenizer


class ShardError(ValueError):
    """A shard folder that is missing pieces or was built with another vocabulary."""


class TokenShards:
    def __init__(self, directory: str | Path, split: str = "train") -> None:
        self.directory = Path(directory)
        try:
            index = json.loads((self.directory / "index.json").read_text())
            self.vocab = Tokenizer.load(self.directory / "vocab.json")
        except (OSError, json.JSONDecodeError) as e:
            raise ShardError(f"{self.directory}: not a token shard folder ({e})") from e
        if index.get("vocab_fingerprint") != self.vocab.fingerprint:
            raise ShardError(f"{self.directory}: index.json and vocab.json disagree on the vocabulary")
        if split not in index["splits"]:
            raise ShardError(f"{self.directory}: no split {split!r} (have {sorted(index['splits'])})")
        self.split = split
        self.num_tokens = int(index["splits"][split]["tokens"])
        self.num_pieces = int(index["splits"][split]["pieces"])
        path = self.directory / f"{split}.bin"
        if path.stat().st_size != 2 * self.num_tokens:
            raise ShardError(f"{path}: {path.stat().st_size} bytes, the index says {self.num_tokens} tokens")
        self.tokens = np.memmap(path, dtype=np.uint16, mode="r") if self.num_tokens else np.zeros(0, np.uint16)
        self._tables = _AugmentTables(self.vocab)

    def __repr__(self) -> str:
        return f"TokenShards({str(self.directory)!r}, {self.split!r}, tokens={self.num_tokens})"

    def sample_batch(
        self,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator,
        transpose: int = 0,
        stretch: float = 0.0,
    ) -> torch.Tensor:
        """(B, seq_len + 1) int64 windows at random offsets; inputs are [:, :-1], targets [:, 1:].

        transpose: each row moves by a uniform number of semitones in [-transpose, transpose] (narrowed
        so that its pitches stay in range). stretch: probability that a row is re-notated at double length.
        """
        span = seq_len + 1
        if self.num_tokens < span:
            raise ShardError(f"{self.split} split has {self.num_tokens} tokens, fewer than seq_len + 1 = {span}")
        starts = torch.randint(0, self.num_tokens - span + 1, (batch_size,), generator=generator).numpy()
        rows = self.tokens[starts[:, None] + np.arange(span)].astype(np.int64)  # (B, span)
        if stretch > 0:
            stretched = torch.rand(batch_size, generator=generator).numpy() < stretch
            for b in np.flatnonzero(stretched):
                rows[b] = self._tables.double_time(rows[b])
        if transpose:
            rows = self._tables.transpose(rows, transpose, generator)
        return torch.from_numpy(rows)

    def iter_sequential(self, batch_size: int, seq_len: int) -> Iterator[torch.Tensor]:
        """Every token once, in order: windows of seq_len + 1 that overlap by one token, B at a time
        (the last batch may be smaller). For validation: deterministic."""
        n_windows = max(0, (self.num_tokens - 1) // seq_len)
        for first in range(0, n_windows, batch_size):
            starts = np.arange(first, min(first + batch_size, n_windows)) * seq_len
            rows = self.tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64)
            yield torch.from_numpy(rows)


class _AugmentTables:
    """Per-id lookups that make augmentations a few numpy operations per batch."""

    def __init__(self, tok: Tokenizer) -> None:
        kind = tok.kind_of
        self.melodic = kind == PITCH
        self.pitch = tok.pitch_of
        self.lowest, self.highest = tok.config.pitch_range
        # double_time: id -> ids (one, or two for a shift that no longer fits one token)
        self.doubled: list[list[int]] = [[i] for i in range(tok.vocab_size)]
        for i in np.flatnonzero(kind == DURATION):
            self.doubled[i] = [int(tok.duration_ids(np.array([2 * tok.ticks_of[i]]))[0])]
        for i in np.flatnonzero(kind == TIME_SHIFT):
            self.doubled[i] = tok.time_shift_ids(2 * int(tok.ticks_of[i]))

    def double_time(self, row: np.ndarray) -> np.ndarray:
        out = [j for i in row.tolist() for j in self.doubled[i]]
        return np.array(out[: len(row)], dtype=np.int64)

    def transpose(self, rows: np.ndarray, k: int, generator: torch.Generator) -> np.ndarray:
        melodic = self.melodic[rows]  # (B, span)
        pitches = np.where(melodic, self.pitch[rows], 0)
        has = melodic.any(axis=1)
        top = np.where(has, np.where(melodic, pitches, -1).max(axis=1), self.lowest)
        bottom = np.where(has, np.where(melodic, pitches, 999).min(axis=1), self.highest)
        lo = np.maximum(-k, self.lowest - bottom)  # (B,)
        hi = np.minimum(k, self.highest - top)
        u = torch.rand(len(rows), generator=generator).numpy()
        shift = lo + np.floor(u * (hi - lo + 1)).astype(np.int64)  # uniform integer in [lo, hi]
        return rows + np.where(melodic, shift[:, None], 0)
