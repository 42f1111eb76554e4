"""Is d_state=1 good enough? SM1 (d_state=1) vs SM1 (d_state=16) vs a GPT of the same size, measured.

Trains the three models through the same loop (`sm1.train`) on the same shards, token budget, batch and
learning-rate schedule, then reports validation bits per note, training tokens/s and peak memory; then the
per-token generation cost at contexts 1K/4K/16K: SM1's recurrent step against the GPT's KV-cache step.

    python benchmarks/compare_models.py --data data/shards --out runs/compare          # GPU, < 9 minutes
    python benchmarks/compare_models.py --data data/shards --out runs/compare --tiny   # CPU smoke test

Prints two tables; writes compare.json and loss_curves.png to --out (each run's folder is under it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from sm1.checkpoint import load
from sm1.data.loader import TokenShards
from sm1.gpt import GPT, GPTConfig
from sm1.state import state_floats
from sm1.train import TrainConfig, TrainResult, build_model, plot_loss_curves, train

PREFILL_CHUNK = 4096  # prompts are prefilled in chunks: bounded memory at 16K for both models


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="folder written by `sm1-data build`")
    p.add_argument("--out", type=Path, default=Path("runs/compare"))
    p.add_argument("--tiny", action="store_true", help="tiny models, few steps, short contexts: a CPU smoke test")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=8)
    p.add_argument("--n-head", type=int, default=4, help="GPT heads")
    p.add_argument("--tokens", type=int, default=20_000_000, help="training tokens per model")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--evals", type=int, default=8, help="validations per run (the loss curve's points)")
    p.add_argument("--max-minutes-per-model", type=float, default=2.3, help="safety stop; the table says if hit")
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--decode-steps", type=int, default=64, help="timed generation steps per context")
    p.add_argument("--compile", action="store_true", help="torch.compile the models for training")
    p.add_argument("--seed", type=int, default=0, help="initial weights and batch order (the same for all three)")
    p.add_argument("--generation-only", action="store_true", help="skip training: time generation only")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if args.tiny:
        args.d_model, args.n_layer, args.n_head, args.seq_len, args.batch_size = 32, 2, 2, 64, 4
        args.tokens, args.evals, args.contexts, args.decode_steps = 64 * 4 * 24, 2, [64, 128, 256], 8
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def count_params(model_cls, config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in model_cls(config).parameters())


def matched_gpt_layers(target: int, vocab_size: int, d_model: int, n_head: int, max_layers: int = 48) -> int:
    """GPT depth at the SM1's width whose parameter count is closest to `target`."""
    def params(n: int) -> int:
        return count_params(GPT, GPTConfig(vocab_size=vocab_size, d_model=d_model, n_layer=n, n_head=n_head))

    return min(range(1, max_layers + 1), key=lambda n: abs(params(n) - target))


def run_configs(args, vocab_size: int) -> dict[str, TrainConfig]:
    """The three runs: identical but for the model."""
    steps = max(1, args.tokens // (args.batch_size * args.seq_len))
    common = dict(
        data=args.data, d_model=args.d_model, seq_len=args.seq_len, batch_size=args.batch_size, max_steps=steps,
        warmup_steps=max(1, steps // 20), lr=args.lr, min_lr=args.lr / 10, eval_every=max(1, steps // args.evals),
        eval_tokens=500_000, device=args.device, compile=args.compile, max_minutes=args.max_minutes_per_model,
        seed=args.seed,
    )  # fmt: skip
    base = TrainConfig(**common, model="sm1", n_layer=args.n_layer, d_state=1, out=args.out / "sm1-d1")
    target = sum(p.numel() for p in build_model(base, vocab_size).parameters())
    gpt_layers = matched_gpt_layers(target, vocab_size, args.d_model, args.n_head)
    return {
        "SM1 d_state=1": base,
        "SM1 d_state=16": base.model_copy(update={"d_state": 16, "out": args.out / "sm1-d16"}),
        f"GPT {gpt_layers}L": TrainConfig(
            **common, model="gpt", n_layer=gpt_layers, n_head=args.n_head, out=args.out / "gpt"
        ),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generation_cost(model: nn.Module, context: int, steps: int, device: torch.device) -> dict:
    """Per-token latency (median ms) and memory of one session after `context` tokens of prompt."""
    vocab = model.config.vocab_size
    tokens = torch.randint(0, vocab, (1, context + steps + 8), generator=torch.Generator().manual_seed(0)).to(device)
    state = model.allocate_state(1, max_len=tokens.shape[1]) if isinstance(model, GPT) else model.allocate_state(1)
    for start in range(0, context, PREFILL_CHUNK):  # prefill: forward in chunks, carrying the state
        _, state = model(tokens[:, start : min(context, start + PREFILL_CHUNK)], state)
    state_bytes = state.nbytes()  # what one session holds: constant for SM1, grows with context for the GPT
    for i in range(8):  # warm-up
        model.step(tokens[:, context + i], state)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        model.step(tokens[:, context + 8 + i], state)
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "context": context,
        "ms_per_token": statistics.median(times),
        "state_bytes": state_bytes,
        "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }


def result_row(label: str, cfg: TrainConfig, result: TrainResult, model: nn.Module) -> dict:
    if isinstance(model, GPT):
        state = {"kv_floats_per_token": 2 * model.config.n_layer * model.config.d_model}
    else:
        floats = state_floats(model.config)
        state = {"state_floats_ssm": floats.ssm, "state_floats_conv": floats.conv}
    return {
        "label": label, "model": cfg.model, "n_layer": cfg.n_layer, "d_model": cfg.d_model,
        "d_state": cfg.d_state if cfg.model == "sm1" else None, "params": result.params,
        "val_loss": result.val_loss, "val_bits_per_token": result.val_bits_per_token,
        "val_bits_per_note": result.val_bits_per_note, "tokens": result.tokens,
        "tokens_per_s": result.tokens_per_s, "interrupted": result.interrupted,
        "peak_memory_mb": result.peak_memory_bytes / 2**20 if result.peak_memory_bytes else None,
        "train_minutes": result.elapsed_s / 60, **state,
    }  # fmt: skip


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_tables(rows: list[dict], generation: list[dict]) -> None:
    if rows:
        print_training_table(rows)
    print_generation_table(generation)


def print_training_table(rows: list[dict]) -> None:
    print("\n| model | params | val bits/token | val bits/note | tokens seen | train tokens/s | peak memory MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        stop = " (time limit)" if r["interrupted"] else ""
        print(
            f"| {r['label']} | {r['params']:,} | {fmt(r['val_bits_per_token'], '.4f')} | "
            f"{fmt(r['val_bits_per_note'], '.3f')} | {r['tokens']:,}{stop} | {r['tokens_per_s']:,.0f} | "
            f"{fmt(r['peak_memory_mb'], ',.0f')} |"
        )


def print_generation_table(generation: list[dict]) -> None:
    contexts = sorted({g["context"] for g in generation})
    print("\n| model | " + " | ".join(f"ms/token @{c}" for c in contexts) + " | "
          + " | ".join(f"state KB @{c}" for c in contexts) + " |")  # fmt: skip
    print("|---|" + "---:|" * (2 * len(contexts)))
    for label in dict.fromkeys(g["label"] for g in generation):
        mine = {g["context"]: g for g in generation if g["label"] == label}
        ms = " | ".join(f"{mine[c]['ms_per_token']:.3f}" for c in contexts)
        kb = " | ".join(f"{mine[c]['state_bytes'] / 1024:,.1f}" for c in contexts)
        print(f"| {label} | {ms} | {kb} |")


def verdict(rows: list[dict], generation: list[dict]) -> list[str]:
    """Who wins what, in words, from the numbers above."""
    scored = [r for r in rows if r["val_bits_per_note"] is not None]
    lines = []
    if scored:
        best = min(scored, key=lambda r: r["val_bits_per_note"])
        others = ", ".join(f"{r['label']} {r['val_bits_per_note']:.3f}" for r in scored if r is not best)
        lines.append(f"quality: {best['label']} has the lowest val bits/note, {best['val_bits_per_note']:.3f}")
        lines.append(f"  (others: {others})")
    if rows:
        fastest = max(rows, key=lambda r: r["tokens_per_s"])
        lines.append(f"training speed: {fastest['label']} is fastest ({fastest['tokens_per_s']:,.0f} tokens/s)")
    longest = max(g["context"] for g in generation)
    at = {g["label"]: g for g in generation if g["context"] == longest}
    quick = min(at.values(), key=lambda g: g["ms_per_token"])
    lines.append(
        f"generation at {longest} tokens of context: {quick['label']} is quickest "
        f"({quick['ms_per_token']:.3f} ms/token); per-session memory "
        + ", ".join(f"{k} {v['state_bytes'] / 1024:,.1f} KB" for k, v in at.items())
    )
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    vocab_size = TokenShards(args.data, "train").vocab.vocab_size
    configs = run_configs(args, vocab_size)
    rows, curves, generation = [], {}, []
    for label, cfg in configs.items():
        if args.generation_only:  # latency does not depend on the weights: skip training
            model = build_model(cfg, vocab_size).to(device).eval()
        else:
            print(f"\n=== {label}: training {cfg.max_steps} steps of {cfg.tokens_per_step():,} tokens")
            result = train(cfg)
            curves[label] = result.log
            model = load(cfg.out / "last", device=device).model
            rows.append(result_row(label, cfg, result, model))
        # generation as served: bf16 weights on the GPU (SM1 keeps its ssm state fp32), fp32 on the CPU
        if device.type == "cuda":
            model = model.to(torch.bfloat16)
        for context in args.contexts:
            generation.append({"label": label, **generation_cost(model, context, args.decode_steps, device)})
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print_tables(rows, generation)
    lines = verdict(rows, generation)
    print("\n" + "\n".join(lines))
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "models": rows,
        "generation": generation,
        "verdict": lines,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out / 'compare.json'}")
    if curves:
        plot_loss_curves(curves, args.out / "loss_curves.png")
        print(f"wrote {args.out / 'loss_curves.png'}")


if __name__ == "__main__":
    main()
