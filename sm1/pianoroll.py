"""Piano-roll pictures of note events: what people look at before they listen (model card, README, tests)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sm1.events import NoteEvent

DRUM_CHANNEL = 9


def save_piano_roll(
    events: Sequence[NoteEvent], path: Path | str, title: str = "", prompt_end: float | None = None
) -> Path:
    """Draw notes as bars (x: beats, y: pitch, colour: program; drums grey) and save a PNG.

    `prompt_end` draws a line where a prompt stops and the model's continuation begins.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4), dpi=100)
    cmap = plt.get_cmap("tab20")
    for ev in events:
        drum = ev.channel == DRUM_CHANNEL
        color = "0.45" if drum else cmap(ev.program % 20)
        alpha = 0.35 + 0.65 * ev.velocity / 127
        ax.broken_barh([(ev.beat, max(ev.duration_beats, 0.05))], (ev.pitch - 0.4, 0.8), color=color, alpha=alpha)
    if prompt_end is not None:
        ax.axvline(prompt_end, color="crimson", linewidth=1.2, linestyle="--", label="prompt | generated")
        ax.legend(loc="upper right", fontsize=8)
    if events:
        pitches = [ev.pitch for ev in events]
        ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
        ax.set_xlim(min(ev.beat for ev in events), max(ev.beat + ev.duration_beats for ev in events))
    ax.set_xlabel("beat")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title or f"{len(events)} notes")
    ax.grid(axis="x", alpha=0.25)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
