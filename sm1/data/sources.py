"""Where training pieces come from: folders of MIDI files, and the corpus shipped with music21.

A source lists `Item`s cheaply (no parsing); `midi_bytes(item)` does the work in a worker process.
Every item carries its licence, so the report (and the model card) can say what the data allows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MIDI_SUFFIXES = (".mid", ".midi", ".kar")
FOLDER_LICENCE = "as given by the folder's owner (not checked)"
MUSIC21_LICENCE = (
    "music21 corpus: public-domain compositions, encodings distributed with the encoders' permission "
    "(music21/corpus/license.txt)"
)
# corpus folders whose licence forbids a freely shippable model; left out unless asked for
RESTRICTED = {
    "essenFolksong": "non-commercial use only (EsAC; music21/corpus/essenFolksong/license.txt)",
}
# corpus files that are not music to learn from
NOT_MUSIC_SUFFIXES = {".rntxt": "roman-numeral analyses (chord labels), not scores"}


@dataclass(frozen=True, order=True)
class Item:
    """One piece: `key` is unique across sources and stable between runs."""

    key: str
    source: str
    licence: str
    path: str
    number: int | None = None  # the tune's number inside a music21 opus file (ABC)


@dataclass(frozen=True)
class Excluded:
    source: str
    pieces: int
    licence: str
    reason: str


class SourceError(ValueError):
    """A source argument that names nothing usable."""


def list_items(spec: str, include_restricted: bool = False) -> tuple[list[Item], list[Excluded]]:
    """Items of one SRC argument: a folder (recursively), `music21`, or `music21:<corpus folder>`."""
    if spec == "music21" or spec.startswith("music21:"):
        return _music21_items(spec.partition(":")[2] or None, include_restricted)
    folder = Path(spec)
    if not folder.is_dir():
        raise SourceError(f"{spec}: not a folder (a source is a folder of MIDI files, or 'music21')")
    return sorted(_folder_items(folder)), []


def _folder_items(folder: Path) -> Iterator[Item]:
    name = f"folder:{folder.resolve().name}"
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            if f.lower().endswith(MIDI_SUFFIXES):
                path = Path(root) / f
                yield Item(f"{name}/{path.relative_to(folder).as_posix()}", name, FOLDER_LICENCE, str(path))


def _music21_items(only: str | None, include_restricted: bool) -> tuple[list[Item], list[Excluded]]:
    from music21 import corpus

    bundle = corpus.corpora.CoreCorpus().metadataBundle
    # iterating the bundle indexes it entry by entry (14 s); its dict of entries is the same set at once
    listed = bundle._metadataEntries.values() if hasattr(bundle, "_metadataEntries") else bundle
    entries = [(Path(str(e.sourcePath)), e.number) for e in listed]
    opus_files = {rel for rel, number in entries if number is not None}
    items: list[Item] = []
    left_out: dict[tuple[str, str, str], int] = {}
    for rel, number in entries:
        if number is None and rel in opus_files:
            continue  # the whole opus file: its tunes are listed one by one
        folder = rel.parts[0]
        if only is not None and folder != only:
            continue
        source = f"music21/{folder}"
        if rel.suffix in NOT_MUSIC_SUFFIXES:
            why = (source, MUSIC21_LICENCE, NOT_MUSIC_SUFFIXES[rel.suffix])
            left_out[why] = left_out.get(why, 0) + 1
            continue
        if folder in RESTRICTED and not include_restricted:
            why = (source, RESTRICTED[folder], "licence forbids a freely shippable model (--include-restricted)")
            left_out[why] = left_out.get(why, 0) + 1
            continue
        number = int(number) if number is not None else None
        key = f"{source}/{rel.relative_to(folder).as_posix()}" + (f"#{number}" if number is not None else "")
        items.append(Item(key, source, RESTRICTED.get(folder, MUSIC21_LICENCE), rel.as_posix(), number))
    if not items and not left_out:
        raise SourceError(f"music21:{only}: no such corpus folder")
    excluded = [Excluded(s, n, lic, why) for (s, lic, why), n in sorted(left_out.items())]
    return sorted(items), excluded


def midi_bytes(item: Item) -> bytes:
    """The item as a standard MIDI file (music21 scores are exported; parse errors propagate)."""
    if item.number is None and not item.source.startswith("music21/"):
        return Path(item.path).read_bytes()
    from music21 import corpus, midi

    score = corpus.parse(item.path, number=item.number, forceSource=True)
    return bytes(midi.translate.streamToMidiFile(score).writestr())
