"""Corpus building: sources -> token shards (uint16), an index, a train/val split by content hash, a report.

Work is cut into batches of items; each batch is tokenized by a worker process into its own part file
(DIR/parts/), written atomically, so a rerun skips finished batches (resumable) and memory stays flat
however many files there are. The shards are then streamed together from the parts, in a fixed order:
the same sources give the same bytes. Identical files (same content hash) are kept once.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sm1.data.sources import Excluded, Item, list_items, midi_bytes
from sm1.midi import MidiError, MidiLimits, read_notes
from sm1.tokenizer import Tokenizer

SPLITS = ("train", "val")


@dataclass
class BuildOptions:
    out: Path
    workers: int = max(1, (os.cpu_count() or 1))
    batch_size: int = 32
    val_fraction: float = 0.02
    include_restricted: bool = False
    limit: int | None = None  # the first N items of each source (a slice, for tries and tests)
    item_timeout_s: int = 300
    limits: MidiLimits = field(default_factory=MidiLimits)
    progress: bool = True


def split_of(sha1: str, val_fraction: float) -> str:
    """Deterministic: the same content lands in the same split, whatever the source or the run."""
    return "val" if int(sha1[:8], 16) / 0x100000000 < val_fraction else "train"


# ---- one batch, in a worker ------------------------------------------------------------------------------


def _batch_name(items: list[Item]) -> str:
    return hashlib.sha1("\n".join(i.key for i in items).encode()).hexdigest()[:20]


class _ItemTimeout(Exception):
    pass


def _on_alarm(signum, frame):  # pragma: no cover - only when a piece hangs
    raise _ItemTimeout


def _tokenize(item: Item, tok: Tokenizer, limits: MidiLimits, timeout_s: int) -> tuple[dict, np.ndarray]:
    """One item -> (its record, its tokens bos..eos). Failures become a skipped record with the reason."""
    record: dict[str, Any] = {"key": item.key, "source": item.source}
    use_alarm = hasattr(signal, "SIGALRM")
    if use_alarm:
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(timeout_s)
    try:
        data = midi_bytes(item)
        record["sha1"] = hashlib.sha1(data).hexdigest()
        notes = read_notes(data, limits, name=item.key)
        ids = tok.encode_notes(notes)
    except MidiError as e:
        return {**record, "skipped": e.reason}, np.zeros(0, np.uint16)
    except _ItemTimeout:
        return {**record, "skipped": f"took longer than {timeout_s} s"}, np.zeros(0, np.uint16)
    except Exception as e:  # a score music21 cannot parse or export: skip it, say why
        return {**record, "skipped": f"{type(e).__name__}: {str(e).strip()[:160]}"}, np.zeros(0, np.uint16)
    finally:
        if use_alarm:
            signal.alarm(0)
    if not ids:
        return {**record, "skipped": "no notes in the vocabulary's range"}, np.zeros(0, np.uint16)
    tokens = np.array([tok.bos_id, *ids, tok.eos_id], dtype=np.uint16)
    return {**record, "notes": len(notes), "tokens": len(tokens)}, tokens


def _run_batch(args: tuple[list[Item], str, MidiLimits, int]) -> dict[str, int]:
    items, parts_dir, limits, timeout_s = args
    tok = Tokenizer.default()
    records, arrays = [], []
    for item in items:
        start = time.perf_counter()
        record, tokens = _tokenize(item, tok, limits, timeout_s)
        records.append({**record, "seconds": round(time.perf_counter() - start, 4)})
        arrays.append(tokens)
    base = Path(parts_dir) / _batch_name(items)
    np.save(f"{base}.tmp.npy", np.concatenate(arrays) if arrays else np.zeros(0, np.uint16))
    Path(f"{base}.tmp.json").write_text(json.dumps(records))
    os.replace(f"{base}.tmp.npy", f"{base}.npy")
    os.replace(f"{base}.tmp.json", f"{base}.json")  # the .json last: it marks the batch done
    return {"items": len(items), "skipped": sum("skipped" in r for r in records)}


# ---- the whole build -------------------------------------------------------------------------------------


def build(sources: list[str], opts: BuildOptions) -> dict[str, Any]:
    """Build DIR/{train,val}.bin, index.json, vocab.json, report.json; returns the report."""
    start = time.time()
    out, parts = Path(opts.out), Path(opts.out) / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.default()

    items: list[Item] = []
    excluded: list[Excluded] = []
    for spec in sources:
        listed, left_out = list_items(spec, opts.include_restricted)
        items += listed[: opts.limit] if opts.limit is not None else listed
        excluded += left_out
    batches = [items[i : i + opts.batch_size] for i in range(0, len(items), opts.batch_size)]
    todo = [b for b in batches if not (parts / f"{_batch_name(b)}.json").exists()]

    bar = tqdm(total=len(items), unit="piece", desc="sm1-data build", disable=not opts.progress)
    bar.update(len(items) - sum(len(b) for b in todo))
    jobs = [(b, str(parts), opts.limits, opts.item_timeout_s) for b in todo]
    for done in _map(jobs, opts.workers):
        bar.update(done["items"])
        bar.set_postfix(skipped=done["skipped"], refresh=False)
    bar.close()
    tokenize_s = time.time() - start

    index, stats = _merge(batches, parts, out, opts.val_fraction)
    index.update(vocab_size=tok.vocab_size, vocab_fingerprint=tok.fingerprint, dtype="uint16")
    tok.save(out / "vocab.json")
    (out / "index.json").write_text(json.dumps(index) + "\n")
    report = _report(sources, opts, excluded, stats, batches, todo, tokenize_s, time.time() - start)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _map(jobs: list, workers: int) -> Iterator[dict[str, int]]:
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_run_batch, jobs)
        return
    # workers are replaced every few batches: music21 keeps caches that would grow over a whole corpus
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    with context.Pool(workers, maxtasksperchild=8) as pool:
        yield from pool.imap_unordered(_run_batch, jobs)


@dataclass
class _Stats:
    per_source: dict[str, Counter] = field(default_factory=dict)
    licence: dict[str, str] = field(default_factory=dict)
    reasons: Counter = field(default_factory=Counter)
    examples: list[tuple[str, str]] = field(default_factory=list)
    work_seconds: float = 0.0  # time spent on items by the workers, over every run that made the parts


def _merge(batches: list[list[Item]], parts: Path, out: Path, val_fraction: float) -> tuple[dict, _Stats]:
    """Stream the parts into the shards in item order, dropping repeats of the same content."""
    stats = _Stats()
    pieces: list[dict[str, Any]] = []
    offsets = dict.fromkeys(SPLITS, 0)
    seen: dict[str, str] = {}
    files = {s: open(out / f"{s}.bin.tmp", "wb") for s in SPLITS}  # noqa: SIM115 - closed below
    try:
        for batch in batches:
            base = parts / _batch_name(batch)
            records = json.loads(Path(f"{base}.json").read_text())
            tokens = np.load(f"{base}.npy", mmap_mode="r")
            at = 0
            for item, rec in zip(batch, records, strict=True):
                counts = stats.per_source.setdefault(item.source, Counter())
                stats.licence[item.source] = item.licence
                counts["seen"] += 1
                stats.work_seconds += rec.get("seconds", 0.0)
                reason = rec.get("skipped")
                if reason is None and rec["sha1"] in seen:
                    reason = f"duplicate of {seen[rec['sha1']]}"
                n = rec.get("tokens", 0)
                piece = tokens[at : at + n]
                at += n
                if reason is not None:
                    counts["skipped"] += 1
                    stats.reasons[_reason_kind(reason)] += 1
                    if len(stats.examples) < 50:
                        stats.examples.append((item.key, reason))
                    continue
                seen[rec["sha1"]] = item.key
                split = split_of(rec["sha1"], val_fraction)
                files[split].write(np.ascontiguousarray(piece).tobytes())
                pieces.append(
                    {"key": item.key, "source": item.source, "split": split, "offset": offsets[split], "length": n}
                )
                offsets[split] += n
                counts["used"] += 1
                counts["notes"] += rec["notes"]
                counts["tokens"] += n
                counts[f"{split}_tokens"] += n
    finally:
        for f in files.values():
            f.close()
    for s in SPLITS:
        os.replace(out / f"{s}.bin.tmp", out / f"{s}.bin")
    splits = {s: {"tokens": offsets[s], "pieces": sum(p["split"] == s for p in pieces)} for s in SPLITS}
    return {"splits": splits, "pieces": pieces}, stats


def _reason_kind(reason: str) -> str:
    """Group reasons that differ only in numbers, object ids or names, for the report."""
    if reason.startswith("duplicate of"):
        return "duplicate content"
    kind, sep, message = reason.partition(": ")
    if sep and kind.isidentifier() and kind.endswith(("Exception", "Error")):  # music21's: keep the message
        message = re.sub(r"<[^>]*>|\([^)]*\)|\d+", "N", message)
        return f"{kind}: {message}"[:100]
    return reason.split("(")[0].split(":")[0].strip()[:80]


def _report(sources, opts, excluded, stats: _Stats, batches, todo, tokenize_s, total_s) -> dict[str, Any]:
    total = Counter()
    for c in stats.per_source.values():
        total.update(c)
    return {
        "sources": sources,
        "options": {
            "val_fraction": opts.val_fraction,
            "include_restricted": opts.include_restricted,
            "limit": opts.limit,
            "workers": opts.workers,
            "batch_size": opts.batch_size,
            "limits": opts.limits.model_dump(),
        },
        "files_seen": total["seen"],
        "files_used": total["used"],
        "files_skipped": total["skipped"],
        "notes": total["notes"],
        "tokens": total["tokens"],
        "train_tokens": total["train_tokens"],
        "val_tokens": total["val_tokens"],
        "tokens_per_note": round(total["tokens"] / max(total["notes"], 1), 3),
        "skipped_reasons": dict(stats.reasons.most_common()),
        "skipped_examples": [{"key": k, "reason": r} for k, r in stats.examples],
        "per_source": {
            s: {"licence": stats.licence[s], **{k: c[k] for k in ("seen", "used", "skipped", "notes", "tokens")}}
            for s, c in sorted(stats.per_source.items())
        },
        "excluded": [asdict(e) for e in excluded],
        "batches": len(batches),
        "batches_reused": len(batches) - len(todo),
        "tokenize_seconds": round(tokenize_s, 2),
        "seconds": round(total_s, 2),
        "worker_seconds_all_runs": round(stats.work_seconds, 1),
    }
