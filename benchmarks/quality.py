"""Does the music make sense? Generated continuations against what the real pieces do next.

Each prompt is the first --prompt-beats of a real piece (MIDI files from ../shared/midi, and held-out
validation pieces of the shards when --data is given). The real continuation is the piece's next
--beats; the generated one is the model's, from the same prompt, at each temperature. Both are measured
the same way:

* notes per beat, and pitch range (semitones, melodic notes);
* pitch-class distance: total variation between the continuation's pitch-class histogram and the
  prompt's (0: same harmony, 1: disjoint);
* in key: share of melodic notes whose pitch class lies in the prompt's key (Krumhansl-Kessler estimate;
  the minor scale includes the raised 6th and 7th);
* unfinished: share of notes the model started (a Pitch token) but never completed with a Duration; the
  streaming decoder drops them, so they are heard as missing notes, never as hanging ones.

Generation goes through `sm1.engine.Engine` with `sm1.sampling` (temperature only, no top-k/top-p), so
the clips are what the server would play, note-grammar masks included.

A piece that ends before the continuation window does (its last note starts before --prompt-beats + --beats)
is left out: its real continuation would be silence, counted as a sparse one. The means are given over all
prompts and per prompt set ("file": --prompts; "val": held-out pieces of the training corpus), since the
files are not from the training distribution (performances and pop arrangements, with dynamics) and a
model may continue them unlike the music it was trained on.

    python benchmarks/quality.py --data data/shards --out runs/quality              # the shipped checkpoint
    python benchmarks/quality.py --checkpoint runs/sm1/best --prompts a.mid b.mid --temperatures 0.9 1.0

Prints a table (means over prompts); writes quality.json and the generated clips (.mid) to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from sm1.checkpoint import load
from sm1.data.loader import TokenShards
from sm1.engine import Engine
from sm1.events import NoteEvent
from sm1.midi import MidiError, read_midi, write_midi
from sm1.sampling import SamplingParams
from sm1.tokenizer import DRUM, PITCH

SHARED_MIDI = Path(__file__).resolve().parents[2] / "shared" / "midi"
DEFAULT_PROMPTS = ("aria_classical.mid", "aria_nocturne.mid", "Maestro_1.mid", "POP909_008.mid",
                   "music21_test10.mid", "Mr._Blue_Sky.mid")  # fmt: skip
# Krumhansl-Kessler key profiles (C major, C minor)
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 9, 10, 11)  # natural minor plus the raised 6th and 7th (melodic/harmonic)
METRICS = ("notes_per_beat", "pitch_range", "pc_distance", "in_key", "unfinished")


# ---------------------------------------------------------------------------------------------- the metrics


def pitch_class_histogram(notes: list[NoteEvent]) -> np.ndarray:
    """Duration-weighted share of each pitch class among melodic notes (zeros if there are none)."""
    hist = np.zeros(12)
    for n in notes:
        if not n.is_drum:
            hist[n.pitch % 12] += n.duration_beats
    return hist / hist.sum() if hist.sum() > 0 else hist


def estimate_key(notes: list[NoteEvent]) -> tuple[int, str]:
    """(tonic pitch class, "major" | "minor") whose profile correlates best with the notes' histogram."""
    hist = pitch_class_histogram(notes)
    if not hist.any():
        return 0, "major"
    best = max(
        ((tonic, mode) for tonic in range(12) for mode in ("major", "minor")),
        key=lambda k: np.corrcoef(hist, np.roll(MAJOR_PROFILE if k[1] == "major" else MINOR_PROFILE, k[0]))[0, 1],
    )
    return best


def key_pitch_classes(tonic: int, mode: str) -> set[int]:
    return {(tonic + d) % 12 for d in (MAJOR_SCALE if mode == "major" else MINOR_SCALE)}


def clip_metrics(prompt: list[NoteEvent], continuation: list[NoteEvent], beats: float) -> dict:
    """The metrics of a continuation (notes in a window of `beats`) relative to its prompt."""
    melodic = [n.pitch for n in continuation if not n.is_drum]
    scale = key_pitch_classes(*estimate_key(prompt))
    prompt_hist, cont_hist = pitch_class_histogram(prompt), pitch_class_histogram(continuation)
    return {
        "notes_per_beat": len(continuation) / beats,
        "pitch_range": max(melodic) - min(melodic) if melodic else 0,
        "pc_distance": 0.5 * float(np.abs(prompt_hist - cont_hist).sum()) if melodic else 1.0,
        "in_key": sum(p % 12 in scale for p in melodic) / len(melodic) if melodic else None,
    }


def covers(notes: list[NoteEvent], until_beat: float) -> bool:
    """Whether a piece goes on to `until_beat` (a note starts there or later): only then is its real
    continuation a whole window of music rather than the silence after its end."""
    return bool(notes) and max(n.beat for n in notes) >= until_beat


def prompt_set(name: str) -> str:
    """ "val" for held-out pieces of the shards, "file" for --prompts files."""
    return "val" if name.startswith("val:") else "file"


def split_piece(notes: list[NoteEvent], prompt_beats: float, beats: float):
    """(prompt, continuation): notes starting before `prompt_beats`, and in the `beats` after it."""
    prompt = [n for n in notes if n.beat < prompt_beats]
    continuation = [n for n in notes if prompt_beats <= n.beat < prompt_beats + beats]
    return prompt, continuation


# ---------------------------------------------------------------------------------------------- generation


@torch.no_grad()
def continue_piece(engine: Engine, prompt: list[NoteEvent], until_beat: float, temperature: float, seed: int,
                   max_tokens: int) -> tuple[list[NoteEvent], float]:  # fmt: skip
    """Generate after `prompt` until the clock passes `until_beat`, through the engine the server uses.

    Returns the new notes and the share of notes started (Pitch tokens) that were never completed.
    """
    tok = engine.tokenizer
    s = engine.admit(tok.encode(prompt), SamplingParams(temperature=temperature, seed=seed))
    notes, started = [], 0
    try:
        while s.pending or (s.beat < until_beat and s.token_index < max_tokens):
            for g in engine.tick([s]):
                started += int(tok.kind_of[g.token] in (PITCH, DRUM))
                notes += g.events
    finally:
        engine.release(s)
    return notes, 1.0 - len(notes) / started if started else 0.0


# ------------------------------------------------------------------------------------------------- prompts


def file_pieces(paths: list[Path]) -> dict[str, list[NoteEvent]]:
    pieces = {}
    for path in paths:
        try:
            pieces[path.name] = read_midi(path)
        except MidiError as e:
            print(f"skipping {path}: {e}", file=sys.stderr)
    return pieces


def validation_pieces(data: Path, count: int, min_beats: float) -> dict[str, list[NoteEvent]]:
    """The first `count` held-out pieces (index.json order) long enough for a prompt and a continuation."""
    shards = TokenShards(data, "val")
    index = json.loads((data / "index.json").read_text())
    pieces = {}
    for piece in (p for p in index["pieces"] if p["split"] == "val"):
        ids = shards.tokens[piece["offset"] : piece["offset"] + piece["length"]]
        notes = shards.vocab.decode(ids.astype(np.int64))
        if covers(notes, min_beats):
            pieces[f"val:{piece['key']}"] = notes
        if len(pieces) == count:
            break
    return pieces


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint folder (default: the shipped one)")
    p.add_argument("--prompts", type=Path, nargs="*", default=[SHARED_MIDI / f for f in DEFAULT_PROMPTS])
    p.add_argument("--data", type=Path, default=None, help="shards folder: add held-out validation pieces")
    p.add_argument("--val-pieces", type=int, default=6)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.9, 1.0])
    p.add_argument("--prompt-beats", type=float, default=16.0)
    p.add_argument("--beats", type=float, default=32.0, help="length of each continuation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/quality"))
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    ck = load(args.checkpoint)
    engine = Engine(ck.model, ck.tokenizer, capacity=1, cuda_graphs=False)
    pieces = file_pieces(args.prompts)
    if args.data:
        pieces |= validation_pieces(args.data, args.val_pieces, args.prompt_beats + args.beats)
    args.out.mkdir(parents=True, exist_ok=True)
    clips, used = [], 0
    for name, notes in pieces.items():
        prompt, real = split_piece(notes, args.prompt_beats, args.beats)
        if not prompt:
            print(f"skipping {name}: no notes in the first {args.prompt_beats:g} beats", file=sys.stderr)
            continue
        if not covers(notes, args.prompt_beats + args.beats):
            last, end = max(n.beat for n in notes), args.prompt_beats + args.beats
            print(f"skipping {name}: its last note starts at beat {last:g}, before the end of the continuation "
                  f"window ({end:g}): no real continuation to compare", file=sys.stderr)  # fmt: skip
            continue
        used += 1
        kind = prompt_set(name)
        clips.append({"piece": name, "set": kind, "source": "real", **clip_metrics(prompt, real, args.beats),
                      "unfinished": 0.0})  # fmt: skip
        for temperature in args.temperatures:
            until = args.prompt_beats + args.beats
            new, unfinished = continue_piece(engine, prompt, until, temperature, args.seed, int(60 * until))
            _, generated = split_piece(new, args.prompt_beats, args.beats)
            clips.append({"piece": name, "set": kind, "source": f"T={temperature:g}",
                          **clip_metrics(prompt, generated, args.beats), "unfinished": unfinished})  # fmt: skip
            slug = Path(name.replace(":", "_").replace("/", "_")).stem
            (args.out / f"{slug}_T{temperature:g}.mid").write_bytes(write_midi(prompt + new))
    summary = summarise(clips)
    sets = dict.fromkeys(c["set"] for c in clips)
    by_set = {name: summarise([c for c in clips if c["set"] == name]) for name in sets}
    print_table(summary, ck.name, used)
    if len(by_set) > 1:
        for name, s in by_set.items():
            print_table(s, f"{ck.name}, prompt set {name!r}", s["real"]["clips"])
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": ck.name,
        "checkpoint_path": str(ck.path),
        "command": " ".join(sys.argv),
        "prompt_beats": args.prompt_beats,
        "beats": args.beats,
        "summary": summary,
        "summary_by_set": by_set,
        "clips": clips,
    }
    (args.out / "quality.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out / 'quality.json'} and the generated clips (.mid) to {args.out}")
    return report


def summarise(clips: list[dict]) -> dict[str, dict]:
    """Mean of each metric per source (real, T=...), over the prompts where it is defined."""
    out = {}
    for source in dict.fromkeys(c["source"] for c in clips):
        mine = [c for c in clips if c["source"] == source]
        out[source] = {
            m: statistics.fmean(vals) if (vals := [c[m] for c in mine if c[m] is not None]) else None for m in METRICS
        }
        out[source]["clips"] = len(mine)
    return out


def print_table(summary: dict[str, dict], name: str, prompts: int) -> None:
    print(f"\n{name}: {prompts} prompts, means over prompts")
    print("| continuation | notes/beat | pitch range | pitch-class distance | in key | unfinished notes |")
    print("|---|---:|---:|---:|---:|---:|")
    for source, s in summary.items():
        cells = [f"{s[m]:.3f}" if s[m] is not None else "-" for m in METRICS]
        print(f"| {source} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
