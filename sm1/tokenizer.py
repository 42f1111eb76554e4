"""Note events <-> token ids, in musical time, with a streaming decoder.

The vocabulary is MidiTok's TSD with programs, id for id (see `miditok_config`, and docs/tokenizer.md for
why): a note is `[Program] Pitch Velocity Duration`, time moves by `TimeShift` tokens, a program token
appears only when the program changes, drums have their own `PitchDrum` tokens. A note is complete, with
its duration, when its Duration token arrives, so the streaming decoder emits it at once.

The grid: onsets and time shifts are multiples of 1/8 beat; durations are 1/8 beat up to 4 beats and
1/4 beat from 4 to 12 beats. Notes held longer than 12 beats are cut to 12. Velocities are rounded to
32 levels (3, 7, ..., 127). Pitches outside 21..109 (drums 27..88) are dropped by the encoder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sm1.events import ChannelMap, NoteArrays, NoteEvent

FORMAT = "sm1-vocab"
FORMAT_VERSION = 1
DRUMS_PROGRAM = 128  # program_of value of the drums program token (MidiTok calls it Program_-1)


class VocabError(ValueError):
    """A saved vocabulary is not the one this code builds (or not a vocabulary at all)."""


@dataclass(frozen=True)
class TokenizerConfig:
    pitch_range: tuple[int, int] = (21, 109)  # inclusive, as in MidiTok
    drum_pitch_range: tuple[int, int] = (27, 88)  # inclusive
    # (first beat, last beat, steps per beat) for durations and time shifts
    beat_res: tuple[tuple[int, int, int], ...] = ((0, 4, 8), (4, 12, 4))
    num_velocities: int = 32

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerConfig:
        return cls(
            pitch_range=tuple(d["pitch_range"]),
            drum_pitch_range=tuple(d["drum_pitch_range"]),
            beat_res=tuple(tuple(r) for r in d["beat_res"]),
            num_velocities=int(d["num_velocities"]),
        )


def miditok_config(config: TokenizerConfig | None = None):  # -> miditok.TokenizerConfig
    """The MidiTok TSD settings that give exactly our vocabulary; every option is set on purpose
    (MidiTok 3.1 turns some on by itself, e.g. time signatures with use_programs)."""
    from miditok import TokenizerConfig as MidiTokConfig

    c = config or TokenizerConfig()
    return MidiTokConfig(
        pitch_range=c.pitch_range,
        beat_res={(lo, hi): res for lo, hi, res in c.beat_res},
        num_velocities=c.num_velocities,
        special_tokens=["PAD", "BOS", "EOS"],
        remove_duplicated_notes=False,
        use_velocities=True,
        use_chords=False,
        use_rests=False,
        use_tempos=False,
        use_time_signatures=False,
        use_key_signatures=False,
        use_sustain_pedals=False,
        use_pitch_bends=False,
        use_control_changes=False,
        use_pitch_intervals=False,
        use_programs=True,
        programs=list(range(-1, 128)),
        one_token_stream_for_programs=True,
        program_changes=True,
        use_pitchdrum_tokens=True,
        drums_pitch_range=c.drum_pitch_range,
        use_note_duration_programs=list(range(-1, 128)),
    )


# token kinds, in the order of tok.kinds (kind_of holds indexes into it)
SPECIAL, PITCH, VELOCITY, DURATION, TIME_SHIFT, DRUM, PROGRAM = range(7)
KINDS = ("special", "pitch", "velocity", "duration", "time_shift", "drum", "program")


def _time_values(beat_res: tuple[tuple[int, int, int], ...]) -> list[tuple[int, int, int]]:
    """(beat, position, resolution) triples as MidiTok names them, shortest first, zero left out."""
    values = [(b, p, res) for lo, hi, res in beat_res for b in range(lo, hi) for p in range(res)]
    values.append((beat_res[-1][1], 0, beat_res[-1][2]))
    return values[1:]


class Tokenizer:
    """The project's vocabulary. Ids are stable for a given config; `fingerprint` names them."""

    kinds = KINDS

    def __init__(self, config: TokenizerConfig | None = None) -> None:
        self.config = c = config or TokenizerConfig()
        self.ticks_per_beat = max(res for _, _, res in c.beat_res)
        times = _time_values(c.beat_res)
        self.time_ticks = np.array([b * self.ticks_per_beat + p * self.ticks_per_beat // res for b, p, res in times])
        self.velocities = np.linspace(0, 127, c.num_velocities + 1).astype(np.int64)[1:]
        time_names = [f"{b}.{p}.{res}" for b, p, res in times]

        entries: list[tuple[str, int, int]] = [
            ("PAD_None", SPECIAL, -1),
            ("BOS_None", SPECIAL, -1),
            ("EOS_None", SPECIAL, -1),
        ]
        entries += [(f"Pitch_{p}", PITCH, p) for p in range(c.pitch_range[0], c.pitch_range[1] + 1)]
        entries += [(f"Velocity_{v}", VELOCITY, int(v)) for v in self.velocities]
        entries += [(f"Duration_{n}", DURATION, int(t)) for n, t in zip(time_names, self.time_ticks, strict=True)]
        entries += [(f"TimeShift_{n}", TIME_SHIFT, int(t)) for n, t in zip(time_names, self.time_ticks, strict=True)]
        entries += [(f"PitchDrum_{p}", DRUM, p) for p in range(c.drum_pitch_range[0], c.drum_pitch_range[1] + 1)]
        entries += [(f"Program_{p}", PROGRAM, p) for p in [*range(128), -1]]

        self.tokens = [name for name, _, _ in entries]
        self._ids = {name: i for i, name in enumerate(self.tokens)}
        self.vocab_size = len(self.tokens)
        assert self.vocab_size <= np.iinfo(np.uint16).max, "token shards store ids as uint16"
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

        # per-token lookup tables (python lists for the decoder's hot loop, numpy arrays for sampling masks)
        self._kind = [k for _, k, _ in entries]
        self._value = [v for _, _, v in entries]
        kind = np.array(self._kind, dtype=np.int64)
        value = np.array(self._value, dtype=np.int64)
        self.kind_of = kind
        self.pitch_of = np.where((kind == PITCH) | (kind == DRUM), value, -1)
        self.velocity_of = np.where(kind == VELOCITY, value, -1)
        self.program_of = np.where(kind == PROGRAM, np.where(value < 0, DRUMS_PROGRAM, value), -1)
        is_time = (kind == DURATION) | (kind == TIME_SHIFT)
        self.ticks_of = np.where(is_time, value, -1)  # grid steps of Duration/TimeShift ids
        self.beats_of = np.where(is_time, value / self.ticks_per_beat, -1.0)

        # encoder tables: first id of each kind, value -> offset
        self._first = {k: self._kind.index(k) for k in range(1, 7)}
        self._shift_ids = {int(t): self._first[TIME_SHIFT] + i for i, t in enumerate(self.time_ticks)}
        self._max_shift = int(self.time_ticks[-1])

    # ---- identity -------------------------------------------------------------------------------------
    @classmethod
    def default(cls) -> Tokenizer:
        return cls()

    def id_of(self, token: str) -> int:
        return self._ids[token]

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.tokens).encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.tokens == other.tokens

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "scheme": "MidiTok TSD with programs (program changes only), PitchDrum tokens",
            "config": asdict(self.config),
            "ticks_per_beat": self.ticks_per_beat,
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint,
            "special": {"pad": self.pad_id, "bos": self.bos_id, "eos": self.eos_id},
            "tokens": self.tokens,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tokenizer:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise VocabError("not an SM1 vocabulary (missing format 'sm1-vocab')")
        if d.get("version") != FORMAT_VERSION:
            raise VocabError(f"vocabulary format version {d.get('version')!r}, this code reads {FORMAT_VERSION}")
        try:
            tok = cls(TokenizerConfig.from_dict(d["config"]))
        except (KeyError, TypeError, ValueError) as e:
            raise VocabError(f"vocabulary config is unreadable: {e}") from e
        if d.get("tokens") != tok.tokens:
            raise VocabError(
                f"vocabulary mismatch: the file lists {len(d.get('tokens') or [])} tokens "
                f"(fingerprint {d.get('fingerprint')}), this code builds {tok.vocab_size} ({tok.fingerprint})"
            )
        return tok

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise VocabError(f"{path}: cannot read vocabulary: {e}") from e
        return cls.from_dict(d)

    def describe(self) -> list[dict[str, Any]]:
        """Every id with its token name, kind and meaning (the documented vocabulary)."""
        meanings = {
            PITCH: lambda v: f"start a note of pitch {v} (current program)",
            VELOCITY: lambda v: f"velocity {v} of the note being written",
            DURATION: lambda v: f"duration {v / self.ticks_per_beat:g} beats; completes the note",
            TIME_SHIFT: lambda v: f"advance the clock by {v / self.ticks_per_beat:g} beats",
            DRUM: lambda v: f"start a drum note, GM percussion key {v} (channel 10)",
            PROGRAM: lambda v: "switch to drums" if v < 0 else f"switch to General MIDI program {v}",
        }
        specials = {self.pad_id: "padding (ignored)", self.bos_id: "start of a piece", self.eos_id: "end of a piece"}
        return [
            {
                "id": i,
                "token": name,
                "kind": KINDS[k],
                "meaning": specials[i] if k == SPECIAL else meanings[k](v),
            }
            for i, (name, k, v) in enumerate(zip(self.tokens, self._kind, self._value, strict=True))
        ]

    # ---- encoding -------------------------------------------------------------------------------------
    def encode(self, events: list[NoteEvent], *, eos: bool = False) -> list[int]:
        """A whole piece from beat 0: bos, then the notes (eos at the end if asked)."""
        body = self.encode_notes(NoteArrays.from_events(events))
        return [self.bos_id, *body, *([self.eos_id] if eos else [])]

    def encode_live(self, events: list[NoteEvent], dec: StreamDecoder) -> list[int]:
        """Tokens that append `events` (beats on the stream's clock) after what `dec` has decoded so far.

        Notes that start before the stream's clock are played at the clock (time cannot go back). Feed the
        returned ids to the model and to `dec`; a note the stream was half-way through writing is dropped.
        """
        return self.encode_notes(NoteArrays.from_events(events), start_tick=dec.tick, program=dec.program)

    def encode_notes(self, notes: NoteArrays, start_tick: int = 0, program: int | None = None) -> list[int]:
        """The encoder shared by whole pieces, live input and corpus building (no bos/eos)."""
        tpb = self.ticks_per_beat
        (plo, phi), (dlo, dhi) = self.config.pitch_range, self.config.drum_pitch_range
        lo, hi = np.where(notes.drum, dlo, plo), np.where(notes.drum, dhi, phi)
        notes = notes.take((notes.pitch >= lo) & (notes.pitch <= hi))
        onset = np.maximum(np.floor(notes.beat * tpb + 0.5).astype(np.int64), start_tick)
        order = np.lexsort((notes.pitch, np.where(notes.drum, -1, notes.program), onset))
        onset = onset[order]
        prog = np.where(notes.drum, -1, notes.program)[order]
        drum = notes.drum[order]
        pitch_id = np.where(drum, self._first[DRUM] - dlo, self._first[PITCH] - plo) + notes.pitch[order]
        vel_id = self._first[VELOCITY] + _nearest(self.velocities, notes.velocity[order])
        dur_id = self.duration_ids(notes.duration[order] * tpb)
        prog_id = np.where(prog < 0, self._first[PROGRAM] + 128, self._first[PROGRAM] + prog)

        ids: list[int] = []
        tick, current = start_tick, program
        for t, p, pid, nid, vid, did in zip(
            onset.tolist(),
            prog.tolist(),
            prog_id.tolist(),
            pitch_id.tolist(),
            vel_id.tolist(),
            dur_id.tolist(),
            strict=True,
        ):
            if t > tick:
                ids += self.time_shift_ids(t - tick)
                tick = t
            if p != current:
                ids.append(pid)
                current = p
            ids += (nid, vid, did)
        return ids

    def duration_ids(self, ticks: np.ndarray) -> np.ndarray:
        """Duration ids of the nearest grid values (cut at the largest, at least the smallest)."""
        return self._first[DURATION] + _nearest(self.time_ticks, ticks)

    def time_shift_ids(self, ticks: int) -> list[int]:
        """Shift tokens for `ticks` grid steps. Greedy, largest first; every count is reachable (the grid
        has every step up to 4 beats)."""
        ids = [self._shift_ids[self._max_shift]] * (ticks // self._max_shift)
        rest = ticks % self._max_shift
        while rest:
            step = int(self.time_ticks[np.searchsorted(self.time_ticks, rest, side="right") - 1])
            ids.append(self._shift_ids[step])
            rest -= step
        return ids

    # ---- decoding -------------------------------------------------------------------------------------
    def decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    def decode(self, ids: list[int] | np.ndarray) -> list[NoteEvent]:
        """Whole-sequence decoding is the streaming decoder run to the end (one definition of meaning)."""
        dec = self.decoder()
        return [ev for i in (ids.tolist() if isinstance(ids, np.ndarray) else ids) for ev in dec.feed(i)]


def _nearest(grid: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest grid value (ties to the larger, as MidiTok), clamped to the grid's ends."""
    mid = (grid[1:] + grid[:-1]) / 2.0
    return np.searchsorted(mid, values, side="right")


class StreamDecoder:
    """Token ids in, complete notes out, one id at a time. Its whole state is a handful of ints.

    A note is `Pitch|PitchDrum Velocity Duration`; any other order drops the unfinished note (what a model
    may sample), so a stream that stops never leaves a note hanging.
    """

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.tick = 0  # the clock, in 1/ticks_per_beat beats
        self.program: int | None = None  # -1 = drums, None = none seen yet (melodic notes play program 0)
        self._pitch: int | None = None
        self._drum = False
        self._velocity: int | None = None
        self._channels = ChannelMap()

    @property
    def beat(self) -> float:
        return self.tick / self.tok.ticks_per_beat

    @property
    def at_note_boundary(self) -> bool:
        return self._pitch is None

    def feed(self, token: int) -> list[NoteEvent]:
        """Advance by one id; returns the note this id completed (a list of zero or one)."""
        if not 0 <= token < self.tok.vocab_size:
            raise ValueError(f"token id {token} is outside the vocabulary (0..{self.tok.vocab_size - 1})")
        kind, value = self.tok._kind[token], self.tok._value[token]
        if kind == VELOCITY and self._pitch is not None and self._velocity is None:
            self._velocity = value
            return []
        if kind == DURATION and self._velocity is not None:
            ev = self._note(value)
            self._pitch = self._velocity = None
            return [ev]
        self._pitch = self._velocity = None
        if kind in (PITCH, DRUM):
            self._pitch, self._drum = value, kind == DRUM
        elif kind == TIME_SHIFT:
            self.tick += value
        elif kind == PROGRAM:
            self.program = value
        return []

    def _note(self, duration_ticks: int) -> NoteEvent:
        program = 0 if self._drum or self.program is None or self.program < 0 else self.program
        return NoteEvent(
            pitch=self._pitch,
            velocity=self._velocity,
            program=program,
            channel=self._channels.channel(program, self._drum),
            beat=self.beat,
            duration_beats=duration_ticks / self.tok.ticks_per_beat,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "tick": self.tick,
            "program": self.program,
            "pitch": self._pitch,
            "drum": self._drum,
            "velocity": self._velocity,
            "channels": sorted(self._channels.assigned.items()),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore a snapshot; a malformed one raises ValueError and leaves the decoder as it was."""
        try:
            tick, program, pitch, velocity = d["tick"], d["program"], d["pitch"], d["velocity"]
            drum = d["drum"]
            channels = {int(p): int(c) for p, c in d["channels"]}
            ok = (
                isinstance(tick, int)
                and tick >= 0
                and (program is None or (isinstance(program, int) and -1 <= program <= 127))
                and (pitch is None or (isinstance(pitch, int) and 0 <= pitch <= 127))
                and (velocity is None or (isinstance(velocity, int) and 1 <= velocity <= 127))
                and isinstance(drum, bool)
                and all(0 <= p <= 127 and 0 <= c <= 15 for p, c in channels.items())
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"decoder state is malformed: {e}") from e
        if not ok:
            raise ValueError(f"decoder state is malformed: {d!r}")
        self.tick, self.program, self._pitch, self._drum, self._velocity = tick, program, pitch, drum, velocity
        self._channels = ChannelMap(channels)


def vocabulary_markdown(tok: Tokenizer | None = None) -> str:
    """The table of every id for docs/tokenizer.md (`python -m sm1.tokenizer` prints it)."""
    tok = tok or Tokenizer.default()
    lines = [
        f"Vocabulary `{tok.fingerprint}`: {tok.vocab_size} ids.",
        "",
        "| id | token | kind | meaning |",
        "|---:|---|---|---|",
    ]
    lines += [f"| {d['id']} | `{d['token']}` | {d['kind']} | {d['meaning']} |" for d in tok.describe()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(vocabulary_markdown(), end="")
