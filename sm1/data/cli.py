"""`sm1-data build SRC... --out DIR`: token shards for training (docs/tokenizer.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sm1.data.build import BuildOptions, build
from sm1.data.sources import SourceError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sm1-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="tokenize sources into DIR/{train,val}.bin + index.json + report.json")
    b.add_argument(
        "sources",
        nargs="+",
        metavar="SRC",
        help="a folder of .mid/.midi files (recursively), 'music21' (its whole corpus) "
        "or 'music21:<folder>' (e.g. music21:bach)",
    )
    b.add_argument("--out", required=True, type=Path, help="output folder (rerun to resume)")
    b.add_argument("--workers", type=int, default=BuildOptions.workers, help="processes (default: all cores)")
    b.add_argument("--batch-size", type=int, default=BuildOptions.batch_size, help="items per work unit")
    b.add_argument("--val-fraction", type=float, default=BuildOptions.val_fraction)
    b.add_argument("--limit", type=int, default=None, help="only the first N items of each source")
    b.add_argument(
        "--include-restricted",
        action="store_true",
        help="also take sources whose licence forbids a freely shippable model (e.g. Essen, NC)",
    )
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    opts = BuildOptions(
        out=args.out,
        workers=args.workers,
        batch_size=args.batch_size,
        val_fraction=args.val_fraction,
        include_restricted=args.include_restricted,
        limit=args.limit,
        progress=not args.no_progress,
    )
    try:
        report = build(args.sources, opts)
    except SourceError as e:
        parser.error(str(e))
    summary = {
        k: report[k]
        for k in (
            "files_seen",
            "files_used",
            "files_skipped",
            "notes",
            "tokens",
            "train_tokens",
            "val_tokens",
            "seconds",
        )
    }
    print(json.dumps(summary), file=sys.stderr)
    print(f"wrote {args.out}/train.bin, val.bin, index.json, vocab.json, report.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
