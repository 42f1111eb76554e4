"""Write a checkpoint's model card (README.md) with sample clips (.mid + piano-roll PNG) beside it.

Every figure in the card is read from a file the run wrote: config.json (model, params, state floats,
validation), the data builder's report.json (sources, licences, pieces, tokens, split) and the run's
log.csv (training time); the samples are generated here through the engine the server uses.

    python scripts/model_card.py checkpoints/sm1-music21 --data data/music21 --run runs/sm1-music21 \
        --hardware "1x NVIDIA H100 80GB" --prompts ../shared/midi
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

from sm1.checkpoint import load
from sm1.engine import ClipLength, Engine
from sm1.midi import read_midi, write_midi
from sm1.pianoroll import save_piano_roll
from sm1.sampling import SamplingParams

PROMPT_BEATS = 16.0
CLIP_BEATS = 32.0
SAMPLES = [  # (name, prompt file or None, temperature, seed)
    ("free-t1.0", None, 1.0, 1),
    ("free-t0.9", None, 0.9, 2),
    ("bach-846-t0.9", "tonejs_bach_846.mid", 0.9, 3),
    ("mozart-k265-t1.0", "partitura_mozart_k265_var1.mid", 1.0, 4),
]


def make_samples(ckpt_dir: Path, prompts: Path, out: Path) -> list[dict]:
    ck = load(ckpt_dir)
    engine = Engine(ck.model, ck.tokenizer, capacity=1, cuda_graphs=False)
    rows = []
    for name, prompt_file, temperature, seed in SAMPLES:
        prompt = []
        if prompt_file:
            prompt = [ev for ev in read_midi(prompts / prompt_file) if ev.beat < PROMPT_BEATS]
        tokens = ck.tokenizer.encode(prompt) if prompt else None
        clip = engine.generate(tokens, SamplingParams(temperature=temperature, seed=seed), ClipLength(beats=CLIP_BEATS))
        (out / f"{name}.mid").write_bytes(write_midi(prompt + clip.events, tempo_bpm=100.0))
        title = f"{ck.name}: {name} ({len(clip.events)} generated notes, seed {seed}, temperature {temperature})"
        save_piano_roll(
            prompt + clip.events, out / f"{name}.png", title, prompt_end=clip.start_beat if prompt else None
        )
        rows.append({"name": name, "prompt": prompt_file or "none", "temperature": temperature, "seed": seed,
                     "notes": len(clip.events), "tokens": clip.tokens})  # fmt: skip
    return rows


def training_time(run: Path) -> tuple[float, int, int]:
    """Wall time, tokens and steps of the whole run (the shipped weights may be an earlier, better step)."""
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["elapsed_s"]), int(rows[-1]["tokens"]), int(rows[-1]["step"])


def card(config: dict, report: dict, samples: list[dict], run: tuple[float, int, int], hardware: str) -> str:
    meta, model, floats = config["meta"], config["model"], config["state_floats"]
    seconds, tokens, steps = run
    total = floats["ssm"] + floats["conv"]
    sources = "\n".join(
        f"| {name} | {s.get('used', '')} | {s.get('notes', '')} | {s.get('tokens', '')} | {s.get('licence', '')} |"
        for name, s in report.get("per_source", {}).items()
    )  # fmt: skip
    shape = " / ".join(str(model[k]) for k in ("d_model", "n_layer", "expand", "d_conv", "dt_rank"))
    mib = config["files"]["model.safetensors"]["bytes"] / 2**20
    weights = f"{mib:.1f} MiB ({config['storage_dtype']}, loaded as fp32)"
    state = f"ssm {floats['ssm']:,} + conv {floats['conv']:,} = {total:,} floats ({total * 4:,} bytes in fp32)"
    excluded = "\n".join(f"* {e}" for e in report.get("excluded", [])) or "* none"
    sample_rows = "\n".join(
        f"| [{s['name']}.mid]({s['name']}.mid) | {s['prompt']} | {s['temperature']} | {s['seed']} | {s['notes']} |"
        f" ![{s['name']}]({s['name']}.png) |"
        for s in samples
    )
    return f"""# {config["name"]}: SM1 (d_state=1) trained on the music21 corpus

The default checkpoint of the SM1 server: a Mamba1 language model with d_state=1 over the project's
443-id MIDI vocabulary (docs/tokenizer.md), small enough that one session's whole recurrent state is
{total * 4 / 1024:.0f} KiB and many sessions run in real time on a 2-core CPU.

## Model

| | |
|---|---|
| architecture | SM1 (Mamba1 blocks, d_state={model["d_state"]}), pre-norm RMSNorm, tied embedding/head |
| d_model / layers / expand / d_conv / dt_rank | {shape} |
| parameters | {config["params"]:,} |
| weights file | {weights} |
| state per session | {state} |
| vocabulary | {config["vocab"]["size"]} ids (vocab.json, fingerprint {config["vocab"]["fingerprint"]}) |

## Data

Built by `sm1-data build music21 --out data/music21` ({report["files_used"]:,} pieces used of
{report["files_seen"]:,} seen, {report["files_skipped"]:,} skipped; {report["notes"]:,} notes, {report["tokens"]:,}
tokens, {report["tokens_per_note"]:.2f} tokens per note). Split by content hash: {report["train_tokens"]:,} train
tokens, {report["val_tokens"]:,} validation tokens.

| source | pieces | notes | tokens | licence |
|---|---:|---:|---:|---|
{sources}

Left out:
{excluded}

What the data allows: the pieces are public-domain compositions whose encodings music21 distributes
with the encoders' permission; the Essen folk songs (non-commercial only) were left out, so nothing in
the training data restricts the use of this checkpoint beyond the music21 corpus licence.

## Training

`{meta.get("command", "")}`

Config: `configs/sm1-default.yaml` (AdamW, warmup + cosine, bf16 autocast with the scan state in fp32,
random transposition of up to 5 semitones). The run: {steps:,} steps, {tokens:,} tokens, {seconds / 60:.1f} minutes
on {hardware} (torch {meta.get("torch", "")}). Loss curve: [loss.png](loss.png). The shipped weights are
those of the best validation, at step {meta["step"]:,}:

| validation | |
|---|---|
| loss (nats/token) | {meta["val_loss"]:.4f} |
| bits per token | {meta["val_bits_per_token"]:.4f} |
| bits per note | {meta["val_bits_per_note"]:.3f} |

## Why d_state=1

Chosen by the three-model comparison in benchmarks/RESULTS.md (same data, batch, schedule and 6M-token budget
at d_model 256): d_state=1 reached 4.760, 4.756 and 4.819 validation bits per note in three runs (the last two
with seeds 0 and 1 and the fused layer), d_state=16 4.754, 4.738 and 4.772, and a GPT of the same size 5.43 to
5.51. d_state=16 is up to 1% better; d_state=1 holds 4.75x less state per session (64 against 304 KiB in fp32)
and trains 2.4-3.7x faster, which is what lets many sessions run in real time on a small CPU.

## Samples

Generated by `python scripts/model_card.py` through the server's engine: {CLIP_BEATS:.0f} beats each, alone or
after the first {PROMPT_BEATS:.0f} beats of a file from the project's shared MIDI set (the red line in the picture).

| clip | prompt | temperature | seed | generated notes | piano roll |
|---|---|---|---|---|---|
{sample_rows}

## Known limits

* Trained on quantized score data (chorales, masses, quartets, lieder): it knows nothing of drums,
  expressive velocity or timing, or popular styles; a drum or pop prompt is continued in a choral manner.
* Small model and small corpus: expect local coherence (voice leading, key) over a few bars, not form.
* Notes longer than the vocabulary's largest duration are cut to it (docs/tokenizer.md).
* It writes its corpus's density: with no prompt 1.75 notes a beat (the training data 1.92), after held-out
  corpus pieces 1.56 against their real 1.69. Music unlike the corpus, with dynamics (performances, pop files),
  it continues about twice as densely as the files go on (7.35 against 3.85 notes a beat on five shared files),
  in the manner of the corpus's chamber music with dynamics, and wider in pitch, though mostly in key; setting
  the prompt's velocities to 90 takes most of that away (benchmarks/RESULTS.md, "Why the continuations were
  denser").
* Validation is on held-out music21 pieces only; no listening test has been run.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="the sm1-data folder it was trained on")
    ap.add_argument("--run", type=Path, required=True, help="the sm1-train run folder (log.csv, loss.png)")
    ap.add_argument("--hardware", required=True)
    ap.add_argument("--prompts", type=Path, default=Path("../shared/midi"))
    args = ap.parse_args()
    samples = make_samples(args.checkpoint, args.prompts, args.checkpoint)
    run = training_time(args.run)
    shutil.copy(args.run / "loss.png", args.checkpoint / "loss.png")
    config = json.loads((args.checkpoint / "config.json").read_text())
    report = json.loads((args.data / "report.json").read_text())
    (args.checkpoint / "README.md").write_text(card(config, report, samples, run, args.hardware))
    print(f"wrote {args.checkpoint / 'README.md'} and {len(samples)} samples")


if __name__ == "__main__":
    main()
