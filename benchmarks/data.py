"""Data benchmark: MIDI parsing (mido vs symusic), tokenizing (ours vs MidiTok TSD, same vocabulary), and
`sm1-data build` end to end, on ../shared/midi repeated to a few thousand files.

    python benchmarks/data.py --out benchmarks/results/data-cpu            # defaults: 3000 files, 1 and 2 workers
    python benchmarks/data.py --files 500 --workers 1 --out /tmp/data-bench  # a quick look

Each repeated copy gets a few distinct bytes after its last chunk (readers ignore them), so the builder,
which keeps identical content once, tokenizes every copy. Prints a table; writes data.json to --out.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import mido
import symusic

from sm1.data.build import BuildOptions, build
from sm1.midi import MidiError, read_notes
from sm1.tokenizer import Tokenizer, miditok_config

SHARED_MIDI = Path(__file__).resolve().parents[2] / "shared" / "midi"


def usable_files(folder: Path) -> list[bytes]:
    """The shared files with notes that both parsers read (so that both rows measure the same work)."""
    out = []
    for path in sorted(folder.glob("*.mid")):
        data = path.read_bytes()
        try:
            if not len(read_notes(data)):
                continue
            mido.MidiFile(file=io.BytesIO(data))
        except (MidiError, OSError, EOFError, ValueError, KeyError):
            continue
        out.append(data)
    return out


def timed(fn, items) -> float:
    start = time.perf_counter()
    for x in items:
        fn(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--midi", type=Path, default=SHARED_MIDI)
    parser.add_argument("--files", type=int, default=3000, help="files for the build (shared files repeated)")
    parser.add_argument("--mido-files", type=int, default=200, help="files parsed by mido (it is slow)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    files = usable_files(args.midi)
    tok = Tokenizer.default()
    repeated = [files[i % len(files)] for i in range(args.files)]
    notes_per_pass = sum(len(read_notes(d)) for d in files)
    rows = []

    def row(name: str, n_files: int, seconds: float, notes: int | None = None, tokens: int | None = None):
        rows.append(
            {
                "step": name,
                "files": n_files,
                "seconds": round(seconds, 3),
                "files_per_s": round(n_files / seconds, 1),
                "notes_per_s": round(notes / seconds) if notes else None,
                "tokens_per_s": round(tokens / seconds) if tokens else None,
            }
        )

    # parse only, one core
    notes_of = {id(d): len(read_notes(d)) for d in files}
    mido_set = repeated[: args.mido_files]

    def notes_in(items: list[bytes]) -> int:
        return sum(notes_of[id(d)] for d in items)

    row(
        "parse: mido.MidiFile",
        len(mido_set),
        timed(lambda d: mido.MidiFile(file=io.BytesIO(d)), mido_set),
        notes=notes_in(mido_set),
    )
    row(
        "parse: symusic.Score.from_midi",
        len(repeated),
        timed(symusic.Score.from_midi, repeated),
        notes=notes_in(repeated),
    )
    row(
        "parse: sm1.midi.read_notes (symusic + checks)",
        len(repeated),
        timed(read_notes, repeated),
        notes=notes_in(repeated),
    )

    # tokenize only, one core, from parsed files
    parsed = [read_notes(d) for d in files]
    scores = [symusic.Score.from_midi(d) for d in files]
    ours_tokens = sum(len(tok.encode_notes(n)) for n in parsed)
    row(
        "tokenize: ours (Tokenizer.encode_notes)",
        len(files),
        timed(tok.encode_notes, parsed),
        notes=notes_per_pass,
        tokens=ours_tokens,
    )
    from miditok import TSD

    theirs = TSD(miditok_config())
    theirs_tokens = sum(len(theirs.encode(s).ids) for s in scores)
    row(
        "tokenize: MidiTok TSD.encode (same vocabulary)",
        len(files),
        timed(theirs.encode, scores),
        notes=notes_per_pass,
        tokens=theirs_tokens,
    )

    # the three MidiTok schemes that fit (same options): vocabulary size and tokens per note
    from miditok import REMI, MIDILike

    schemes = {}
    for cls in (TSD, REMI, MIDILike):
        scheme = cls(miditok_config())
        n = sum(len(scheme.encode(s).ids) for s in scores)
        per_note = round(n / notes_per_pass, 3)
        schemes[cls.__name__] = {"vocab_size": len(scheme), "tokens": n, "tokens_per_note": per_note}

    # the whole build, end to end (list, parse, tokenize, write parts, merge shards)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for i, data in enumerate(repeated):
            (src / f"{i:06d}.mid").write_bytes(data + i.to_bytes(4, "big"))
        for workers in args.workers:
            report = build([str(src)], BuildOptions(out=Path(tmp) / f"out{workers}", workers=workers, progress=False))
            assert report["files_used"] == len(repeated), report["skipped_reasons"]
            row(
                f"sm1-data build, {workers} worker(s)",
                len(repeated),
                report["seconds"],
                notes=report["notes"],
                tokens=report["tokens"],
            )

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "versions": {p: metadata.version(p) for p in ("symusic", "mido", "miditok", "music21")},
        "distinct_files": len(files),
        "notes_per_pass": notes_per_pass,
        "rows": rows,
        "miditok_schemes": schemes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'step':52} {'files':>6} {'s':>8} {'files/s':>9} {'notes/s':>10} {'tokens/s':>10}")
    for r in rows:
        print(
            f"{r['step']:52} {r['files']:>6} {r['seconds']:>8} {r['files_per_s']:>9} "
            f"{r['notes_per_s'] or '':>10} {r['tokens_per_s'] or '':>10}"
        )


if __name__ == "__main__":
    main()
