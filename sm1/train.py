"""Train an SM1 (or, for the comparison, a GPT) language model on the token shards of `sm1-data`.

A plain loop a person can step through: config, data, model, optimizer, loop, eval, checkpoint.

    sm1-train --data data/shards --out runs/sm1 --d-model 256 --n-layer 8 --max-steps 5000
    sm1-train --config train.yaml --lr 3e-4                 # a YAML/JSON file, flags override it
    torchrun --nproc-per-node 2 -m sm1.train --config train.yaml   # DDP: same command, N processes

Run folder (--out): log.csv (one row per step, validation columns at evaluations), loss.png,
last/ and best/ (checkpoints written by `sm1.checkpoint.save`), resume/ (exact resume state).

Exact resume: the batch of step s, micro-step m on rank r is drawn from a generator seeded with
(seed, s, m, r) and the learning rate is a function of s, so the data position and the schedule are
just the step number. resume/ holds the fp32 weights and the AdamW moments (safetensors) and the step,
config and optimizer hyper-parameters (JSON); no pickle. Running the same command again resumes;
Ctrl-C (or SIGTERM, as a scheduler sends) saves the resume state at the next step boundary and exits.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import sys
import time
import types
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args, get_origin

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from sm1.checkpoint import load_tensors, save, unique_state_dict
from sm1.data.loader import TokenShards
from sm1.gpt import GPT, GPTConfig
from sm1.model import SM1, SM1Config
from sm1.tokenizer import DRUM, PITCH

LOG_COLUMNS = [
    "step", "tokens", "lr", "train_loss", "val_loss", "val_bits_per_token", "val_bits_per_note",
    "tokens_per_s", "elapsed_s",
]  # fmt: skip
MODEL_FIELDS = ("model", "d_model", "n_layer", "d_state", "expand", "d_conv", "n_head")


class TrainConfig(BaseModel):
    """Everything a run depends on; saved with every checkpoint and in the resume state."""

    model_config = ConfigDict(extra="forbid")

    data: Path  # folder written by `sm1-data build`
    out: Path = Path("runs/sm1")
    name: str | None = None  # checkpoint name (default: the --out folder's name)
    model: Literal["sm1", "gpt"] = "sm1"
    d_model: int = 256
    n_layer: int = 8
    d_state: int = 1  # sm1 only
    expand: int = 2  # sm1 only
    d_conv: int = 4  # sm1 only
    n_head: int = 4  # gpt only
    seq_len: int = 1024
    batch_size: int = 16  # sequences per micro-step per process
    grad_accum: int = 1
    max_steps: int = 5000
    warmup_steps: int = 200
    lr: float = 1e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    transpose: int = 0  # augment: shift each row by a random number of semitones in [-transpose, transpose]
    stretch: float = 0.0  # augment: probability that a row is re-notated at double length (tempo)
    eval_every: int = 250
    eval_tokens: int = 1_000_000  # validation tokens per evaluation (the whole split if it is smaller)
    seed: int = 0
    device: str = "auto"  # auto: cuda if available, else cpu
    compile: bool = False
    save_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_minutes: float | None = None  # stop (resumable) after this much wall time, e.g. a job's time limit
    progress: bool = True

    def tokens_per_step(self, world_size: int = 1) -> int:
        return self.batch_size * self.seq_len * self.grad_accum * world_size


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports: the comparison benchmark reads these."""

    step: int
    tokens: int
    params: int
    val_loss: float | None
    val_bits_per_token: float | None
    val_bits_per_note: float | None
    tokens_per_s: float
    peak_memory_bytes: int | None
    elapsed_s: float
    interrupted: bool
    out: Path
    log: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig, vocab_size: int) -> nn.Module:
    if cfg.model == "gpt":
        return GPT(GPTConfig(vocab_size=vocab_size, d_model=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head))
    return SM1(
        SM1Config(
            vocab_size=vocab_size,
            d_model=cfg.d_model,
            n_layer=cfg.n_layer,
            d_state=cfg.d_state,
            expand=cfg.expand,
            d_conv=cfg.d_conv,
        )
    )


def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) of a (B, T + 1) batch."""
    logits, _ = model(batch[:, :-1])  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # weight decay on matrices only; not on norms, biases, A_log, D (as nanoGPT and Mamba do)
    params = list(unique_state_dict(model).keys())
    named = dict(model.named_parameters())
    decay = [named[n] for n in params if n in named and named[n].dim() >= 2]
    other = [named[n] for n in params if n in named and named[n].dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))) * (cfg.lr - cfg.min_lr)


# ----------------------------------------------------------------------------------------------------- data


def train_batch(data: TokenShards, cfg: TrainConfig, step: int, micro: int, rank: int) -> torch.Tensor:
    """The batch of (step, micro-step, rank): a pure function of them, so resuming needs only the step."""
    index = (step * cfg.grad_accum + micro) * 1024 + rank  # up to 1024 processes
    g = torch.Generator().manual_seed(cfg.seed * 2**40 + index)
    return data.sample_batch(cfg.batch_size, cfg.seq_len, generator=g, transpose=cfg.transpose, stretch=cfg.stretch)


def tokens_per_note(data: TokenShards) -> float:
    """Tokens per note of a split (every note has exactly one Pitch or PitchDrum token): bits per token
    times this is bits per note, a figure that does not depend on how the vocabulary splits a note."""
    notes = np.isin(data.vocab.kind_of[data.tokens], (PITCH, DRUM)).sum()
    return data.num_tokens / max(1, int(notes))


@torch.no_grad()
def evaluate(model: nn.Module, data: TokenShards, cfg: TrainConfig, device: torch.device, autocast,
             per_note: float) -> dict:  # fmt: skip
    """Loss over the first eval_tokens of the validation split, in order (the same tokens every time)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in data.iter_sequential(cfg.batch_size, cfg.seq_len):
        batch = batch.to(device)
        with autocast:
            logits, _ = model(batch[:, :-1])
        total += F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").item()
        count += batch[:, 1:].numel()
        if count >= cfg.eval_tokens:
            break
    model.train(was_training)
    loss = total / max(1, count)
    bits = loss / math.log(2)
    return {"val_loss": loss, "val_bits_per_token": bits, "val_bits_per_note": bits * per_note}


# ------------------------------------------------------------------------------------------ run folder files


class RunFolder:
    """The files of one run: CSV log, loss plot, checkpoints, resume state."""

    def __init__(self, out: Path):
        self.out = out
        self.log_path = out / "log.csv"
        self.plot_path = out / "loss.png"
        self.resume_dir = out / "resume"

    def read_log(self, up_to_step: int) -> list[dict]:
        """Rows logged up to `up_to_step` (rows after the resume point are dropped: they will be redone)."""
        if not self.log_path.exists():
            return []
        with open(self.log_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= up_to_step]
        return [{k: _num(v) for k, v in r.items()} for r in rows]

    def write_log(self, rows: list[dict]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w", newline="") as f:
            writer = csv.DictWriter(f, LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def append_log(self, row: dict) -> None:
        new = not self.log_path.exists()
        with open(self.log_path, "a", newline="") as f:
            writer = csv.DictWriter(f, LOG_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)

    def plot(self, rows: list[dict], title: str) -> None:
        plot_loss_curves({title: rows}, self.plot_path)

    def save_resume(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, cfg, best) -> None:
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in unique_state_dict(model).items()}
        opt = optimizer.state_dict()
        for idx, state in opt["state"].items():
            for key, value in state.items():
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
        meta = {
            "step": step,
            "best_val_loss": best,
            "config": json.loads(cfg.model_dump_json()),
            "param_groups": opt["param_groups"],
            "optim_state_keys": {str(i): sorted(s) for i, s in opt["state"].items()},
        }
        self.resume_dir.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(self.resume_dir / "state.safetensors.tmp"))
        os.replace(self.resume_dir / "state.safetensors.tmp", self.resume_dir / "state.safetensors")
        (self.resume_dir / "state.json.tmp").write_text(json.dumps(meta, indent=1))
        os.replace(self.resume_dir / "state.json.tmp", self.resume_dir / "state.json")

    def load_resume(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig):
        """(step, best val loss) of the saved state, loaded into model and optimizer; None if there is none."""
        meta_path = self.resume_dir / "state.json"
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        saved = meta["config"]
        changed = [k for k in MODEL_FIELDS if saved.get(k) != getattr(cfg, k)]
        if changed:
            raise SystemExit(
                f"{self.out} holds a run of another model ({', '.join(changed)} differ): "
                "use another --out, or delete its resume/ folder to start over"
            )
        tensors = load_file(self.resume_dir / "state.safetensors")
        load_tensors(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(self.resume_dir))
        device = next(model.parameters()).device
        state = {
            int(i): {key: tensors[f"optim.{i}.{key}"].to(device) for key in keys}
            for i, keys in meta["optim_state_keys"].items()
        }
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        return meta["step"], meta["best_val_loss"]


def plot_loss_curves(runs: dict[str, list[dict]], path: Path) -> None:
    """Train (thin) and validation (dots) loss against tokens seen, one colour per run."""
    try:
        import matplotlib
    except ImportError:  # a bare GPU box: the CSV log has every number, the plot is a convenience
        print(f"matplotlib is not installed: no {path.name}", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (label, rows) in enumerate(runs.items()):
        colour = f"C{i}"
        train = [(r["tokens"], r["train_loss"]) for r in rows if r.get("train_loss") not in ("", None)]
        val = [(r["tokens"], r["val_loss"]) for r in rows if r.get("val_loss") not in ("", None)]
        if train:
            ax.plot(*zip(*train, strict=True), color=colour, alpha=0.35, linewidth=0.8, label=f"{label} train")
        if val:
            ax.plot(*zip(*val, strict=True), "o-", color=colour, label=f"{label} val")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _num(v: str):
    if v == "":
        return ""
    f = float(v)
    return int(f) if f.is_integer() and "." not in v and "e" not in v else f


# ---------------------------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Under torchrun (WORLD_SIZE > 1): one process per GPU (nccl), or per CPU process (gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world)


def pick_device(name: str, ddp: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank if ddp.world_size > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    return device


class StopRequest:
    """Ctrl-C / SIGTERM: finish the current step, evaluate, save the resume state, exit."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, ddp: Dist, device: torch.device, out_of_time: bool) -> bool:
        """Every rank stops at the same step, if any rank was asked to (or ran out of time)."""
        stop = self.requested or out_of_time
        if ddp.world_size == 1:
            return stop
        flag = torch.tensor([float(stop)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


# -------------------------------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig) -> TrainResult:
    ddp = init_distributed()
    device = pick_device(cfg.device, ddp)
    run = RunFolder(cfg.out)
    train_data, val_data = TokenShards(cfg.data, "train"), TokenShards(cfg.data, "val")
    tokenizer = train_data.vocab
    val_tokens_per_note = tokens_per_note(val_data)

    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    raw_model = build_model(cfg, tokenizer.vocab_size).to(device)
    optimizer = make_optimizer(raw_model, cfg, device)
    resumed = run.load_resume(raw_model, optimizer, cfg)
    step, best = resumed if resumed else (0, None)
    start_step = step
    log = run.read_log(step)
    if ddp.main:
        run.write_log(log)
        print(f"{'resuming at step ' + str(step) if resumed else 'starting'}: {cfg.model}, "
              f"{sum(p.numel() for p in raw_model.parameters()):,} params, {train_data.num_tokens:,} train tokens, "
              f"{cfg.tokens_per_step(ddp.world_size):,} tokens/step, device {device}")  # fmt: skip

    model = torch.compile(raw_model) if cfg.compile else raw_model
    if ddp.world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    on_cuda = device.type == "cuda"
    # bf16 matmuls on the GPU; the model keeps fp32 weights and its scan state in fp32
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else nullcontext()
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)

    tokens_per_step = cfg.tokens_per_step(ddp.world_size)
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (cfg.progress and ddp.main), unit="step")
    train_time, last_val, interrupted, t0 = 0.0, {}, False, time.perf_counter()
    with StopRequest() as stop:
        while step < cfg.max_steps:
            t_step = time.perf_counter()
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                batch = train_batch(train_data, cfg, step, micro, ddp.rank).to(device, non_blocking=True)
                sync = micro == cfg.grad_accum - 1 or ddp.world_size == 1
                with (nullcontext() if sync else model.no_sync()), autocast:
                    loss = lm_loss(model, batch) / cfg.grad_accum
                loss.backward()
                loss_sum += loss.detach()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            train_loss = float(loss_sum)  # waits for the GPU: the step's time is real
            train_time += time.perf_counter() - t_step
            step += 1
            row = {
                "step": step, "tokens": step * tokens_per_step, "lr": lr, "train_loss": train_loss,
                "tokens_per_s": round((step - start_step) * tokens_per_step / train_time, 1),
                "elapsed_s": round(time.perf_counter() - t0, 3),
            }  # fmt: skip
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}")
            out_of_time = cfg.max_minutes is not None and time.perf_counter() - t0 > 60 * cfg.max_minutes
            stopping = stop.agreed(ddp, device, out_of_time)
            if ddp.main and (step % cfg.eval_every == 0 or step == cfg.max_steps or stopping):
                last_val = evaluate(raw_model, val_data, cfg, device, autocast, val_tokens_per_note)
                row.update(last_val)
                bar.write(
                    f"step {step}: train {train_loss:.4f}  val {last_val['val_loss']:.4f} "
                    f"({last_val['val_bits_per_note']:.3f} bits/note)"
                )
                meta = checkpoint_meta(cfg, step, tokens_per_step, last_val, train_data, val_data, val_tokens_per_note)
                name = cfg.name or run.out.name
                save(run.out / "last", raw_model, tokenizer, meta, name=name, dtype=cfg.save_dtype)
                if best is None or last_val["val_loss"] < best:
                    best = last_val["val_loss"]
                    save(run.out / "best", raw_model, tokenizer, meta, name=name, dtype=cfg.save_dtype)
                run.save_resume(raw_model, optimizer, step, cfg, best)
            if ddp.main:
                run.append_log(row)
                log.append(row)
                if "val_loss" in row:
                    run.plot(log, f"{cfg.model} d_state={cfg.d_state}" if cfg.model == "sm1" else cfg.model)
            if stopping:
                interrupted = step < cfg.max_steps
                break
    bar.close()
    if ddp.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    peak = torch.cuda.max_memory_allocated(device) if on_cuda else None
    return TrainResult(
        step=step,
        tokens=step * tokens_per_step,
        params=sum(p.numel() for p in raw_model.parameters()),
        val_loss=last_val.get("val_loss"),
        val_bits_per_token=last_val.get("val_bits_per_token"),
        val_bits_per_note=last_val.get("val_bits_per_note"),
        tokens_per_s=(step - start_step) * tokens_per_step / max(train_time, 1e-9),
        peak_memory_bytes=peak,
        elapsed_s=time.perf_counter() - t0,
        interrupted=interrupted,
        out=run.out,
        log=log,
    )


def checkpoint_meta(cfg, step, tokens_per_step, val, train_data, val_data, val_tokens_per_note) -> dict:
    """Training facts stored in config.json: enough to reproduce the run and to write the model card."""
    return {
        "step": step,
        "tokens_seen": step * tokens_per_step,
        **val,
        "data": {
            "dir": str(cfg.data),
            "train_tokens": train_data.num_tokens,
            "val_tokens": val_data.num_tokens,
            "val_tokens_per_note": val_tokens_per_note,
        },
        "train_config": json.loads(cfg.model_dump_json()),
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
    }


# ---------------------------------------------------------------------------------------------- command line


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """--config FILE (YAML or JSON) first, then every field of TrainConfig as a --flag that overrides it."""
    parser = argparse.ArgumentParser(prog="sm1-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="YAML or JSON file with any of the fields below")
    for name, info in TrainConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = info.annotation
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif get_origin(kind) is Literal:
            parser.add_argument(flag, choices=get_args(kind), default=None)
        else:
            if get_origin(kind) is types.UnionType:  # X | None
                kind = next(a for a in get_args(kind) if a is not type(None))
            default = "" if info.is_required() else f" (default {info.default})"
            parser.add_argument(flag, type=kind, default=None, help=f"{kind.__name__}{default}")
    args = vars(parser.parse_args(argv))
    config_file = args.pop("config")
    values = read_config_file(config_file) if config_file else {}
    values.update({k: v for k, v in args.items() if v is not None})
    try:
        return TrainConfig(**values)
    except ValidationError as e:
        parser.error(f"{config_file or 'flags'}: {e}")


def read_config_file(path: Path) -> dict:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def main(argv: list[str] | None = None) -> None:
    result = train(config_from_args(argv))
    if int(os.environ.get("RANK", "0")) == 0:
        summary = {k: v for k, v in asdict(result).items() if k != "log"}
        print(json.dumps(summary, indent=1, default=str))
    if result.interrupted:
        sys.exit(130)


if __name__ == "__main__":
    main()
