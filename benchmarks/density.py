"""How many notes a beat: the training data, the model running free, and its continuations of prompts.

Three measurements that together say whether a density gap between generated and real music comes from the
token path (decoding, sampling, the engine) or from the model and what it is asked to continue:

* data: notes per beat of the shards (Pitch tokens over the beats their TimeShift tokens add up to), per
  split and per source, beside each source's share of notes whose velocity is not the corpus default
  (Velocity_91): music with dynamics;
* free: the engine's streams with no prompt at temperature 1 (no top-k/top-p), --free-tokens tokens each:
  notes per beat and the share of TimeShift tokens, to set beside the data's;
* prompts: continuations (--beats after the first --prompt-beats, as in quality.py) of held-out pieces and of
  --prompts files, each as written and with every prompt velocity set to 90 (the corpus default), averaged
  over --seeds seeds; with the share of generated notes on the string programs 40-42 (violin, viola, cello:
  the corpus's quartets).

    python benchmarks/density.py --data data/music21 --out benchmarks/results/density-cpu

Prints tables; writes density.json to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from quality import DEFAULT_PROMPTS, SHARED_MIDI, file_pieces, split_piece, validation_pieces

from sm1.checkpoint import load
from sm1.data.loader import TokenShards
from sm1.engine import Engine
from sm1.events import NoteEvent
from sm1.sampling import SamplingParams
from sm1.tokenizer import PITCH, TIME_SHIFT, VELOCITY, Tokenizer

STRINGS = (40, 41, 42)


def data_density(data: Path) -> dict:
    index = json.loads((data / "index.json").read_text())
    out: dict = {"splits": {}, "sources": {}}
    per_source: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0, 0])
    for split in ("train", "val"):
        shards = TokenShards(data, split)
        tok = shards.vocab
        ids = np.asarray(shards.tokens).astype(np.int64)
        kind = tok.kind_of[ids]
        notes, beats = int((kind == PITCH).sum()), float(tok.beats_of[ids[kind == TIME_SHIFT]].sum())
        out["splits"][split] = {
            "tokens": len(ids),
            "notes": notes,
            "beats": beats,
            "notes_per_beat": notes / beats,
            "tokens_per_beat": len(ids) / beats,
            "time_shift_share": float((kind == TIME_SHIFT).mean()),
        }
        for piece in (p for p in index["pieces"] if p["split"] == split):
            seg = ids[piece["offset"] : piece["offset"] + piece["length"]]
            k = tok.kind_of[seg]
            velocity = tok.velocity_of[seg[k == VELOCITY]]
            acc = per_source[piece["source"]]
            acc[0] += int((k == PITCH).sum())
            acc[1] += float(tok.beats_of[seg[k == TIME_SHIFT]].sum())
            acc[2] += int((velocity != 91).sum())
            acc[3] += len(velocity)
    for source, (n, b, dyn, v) in sorted(per_source.items(), key=lambda kv: -kv[1][0]):
        if b > 0 and v > 0:
            out["sources"][source] = {"notes": n, "notes_per_beat": n / b, "velocity_not_91": dyn / v}
    return out


@torch.no_grad()
def free_density(engine: Engine, seeds: int, tokens: int) -> dict:
    tok = engine.tokenizer
    streams = [engine.admit(None, SamplingParams(temperature=1.0, seed=s)) for s in range(seeds)]
    notes, shifts = dict.fromkeys(streams, 0), dict.fromkeys(streams, 0)
    for _ in range(tokens):
        for g in engine.tick(streams):
            notes[g.session] += len(g.events)
            shifts[g.session] += int(tok.kind_of[g.token] == TIME_SHIFT)
    rows = [{"seed": s.params.seed, "beats": s.beat, "notes": notes[s], "notes_per_beat": notes[s] / max(s.beat, 1e-9),
             "time_shift_share": shifts[s] / tokens} for s in streams]  # fmt: skip
    for s in streams:
        engine.release(s)
    total_notes, total_beats = sum(r["notes"] for r in rows), sum(r["beats"] for r in rows)
    return {"tokens_per_stream": tokens, "streams": rows, "notes_per_beat": total_notes / total_beats,
            "tokens_per_beat": tokens * len(rows) / total_beats,
            "time_shift_share": float(np.mean([r["time_shift_share"] for r in rows]))}  # fmt: skip


@torch.no_grad()
def continuation_density(engine: Engine, prompt: list[NoteEvent], start: float, beats: float, seeds: int) -> dict:
    """Mean over seeds of the notes a beat generated in [start, start + beats), and their share on strings."""
    tok: Tokenizer = engine.tokenizer
    until, max_tokens = start + beats, int(60 * (start + beats))
    streams = [engine.admit(tok.encode(prompt), SamplingParams(temperature=1.0, seed=s)) for s in range(seeds)]
    counts, strings = dict.fromkeys(streams, 0), 0
    while live := [s for s in streams if s.pending or (s.beat < until and s.token_index < max_tokens)]:
        for g in engine.tick(live):
            window = [e for e in g.events if start <= e.beat < until]
            counts[g.session] += len(window)
            strings += sum(e.program in STRINGS for e in window)
    for s in streams:
        engine.release(s)
    total = sum(counts.values())
    return {"notes_per_beat": total / (beats * seeds), "strings": strings / total if total else 0.0}


def at_velocity(notes: list[NoteEvent], velocity: int) -> list[NoteEvent]:
    return [dataclasses.replace(n, velocity=velocity) for n in notes]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint folder (default: the shipped one)")
    p.add_argument("--data", type=Path, required=True, help="the shards the checkpoint was trained on")
    p.add_argument("--prompts", type=Path, nargs="*", default=[SHARED_MIDI / f for f in DEFAULT_PROMPTS])
    p.add_argument("--val-pieces", type=int, default=6)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--free-tokens", type=int, default=3000)
    p.add_argument("--prompt-beats", type=float, default=16.0)
    p.add_argument("--beats", type=float, default=32.0)
    p.add_argument("--out", type=Path, default=Path("runs/density"))
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    ck = load(args.checkpoint)
    engine = Engine(ck.model, ck.tokenizer, capacity=max(args.seeds, 8), cuda_graphs=False)
    data = data_density(args.data)
    print("\n| data | notes/beat | tokens/beat | TimeShift share |\n|---|---:|---:|---:|")
    for split, d in data["splits"].items():
        print(f"| {split} | {d['notes_per_beat']:.3f} | {d['tokens_per_beat']:.3f} | {d['time_shift_share']:.4f} |")
    print("\n| source | notes | notes/beat | velocity not 91 |\n|---|---:|---:|---:|")
    for source, d in data["sources"].items():
        if d["notes"] >= 2000:
            print(f"| {source} | {d['notes']} | {d['notes_per_beat']:.2f} | {d['velocity_not_91']:.3f} |")

    free = free_density(engine, max(args.seeds, 8), args.free_tokens)
    print(f"\nfree running, {len(free['streams'])} streams x {args.free_tokens} tokens, T=1: "
          f"{free['notes_per_beat']:.3f} notes/beat (streams "
          + ", ".join(f"{r['notes_per_beat']:.2f}" for r in free["streams"])
          + f"), {free['tokens_per_beat']:.2f} tokens/beat, TimeShift {free['time_shift_share']:.4f}")  # fmt: skip

    pieces = file_pieces(args.prompts) | validation_pieces(args.data, args.val_pieces, args.prompt_beats + args.beats)
    rows = []
    for name, notes in pieces.items():
        prompt, real = split_piece(notes, args.prompt_beats, args.beats)
        if not prompt or max(n.beat for n in notes) < args.prompt_beats + args.beats:
            continue
        as_written = continuation_density(engine, prompt, args.prompt_beats, args.beats, args.seeds)
        at_90 = continuation_density(engine, at_velocity(prompt, 90), args.prompt_beats, args.beats, args.seeds)
        rows.append({"piece": name, "set": "val" if name.startswith("val:") else "file",
                     "real": len(real) / args.beats, "as_written": as_written, "velocity_90": at_90})  # fmt: skip
    print(f"\ncontinuations at T=1, {args.seeds} seeds: notes/beat (share of generated notes on programs 40-42)")
    print("| prompt | real | as written | prompt velocities 90 |\n|---|---:|---:|---:|")
    for r in rows:
        a, v = r["as_written"], r["velocity_90"]
        print(f"| {r['piece']} | {r['real']:.2f} | {a['notes_per_beat']:.2f} ({a['strings']:.2f}) | "
              f"{v['notes_per_beat']:.2f} ({v['strings']:.2f}) |")  # fmt: skip
    means = {}
    for group in ("file", "val"):
        mine = [r for r in rows if r["set"] == group]
        if mine:
            means[group] = {k: float(np.mean([r[k] if k == "real" else r[k]["notes_per_beat"] for r in mine]))
                            for k in ("real", "as_written", "velocity_90")}  # fmt: skip
            m = means[group]
            print(f"| mean of {len(mine)} {group} prompts | {m['real']:.2f} | {m['as_written']:.2f} | "
                  f"{m['velocity_90']:.2f} |")  # fmt: skip

    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "checkpoint": ck.name,
              "command": " ".join(sys.argv), "data": data, "free": free, "prompts": rows, "means": means}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "density.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out / 'density.json'}")
    return report


if __name__ == "__main__":
    main()
