// A scrolling piano roll on a canvas: time runs right to left past the playhead, pitch bottom to top.
// Notes right of the playhead are written but not yet played (the server writes ahead of playback).

const PALETTE = ["#4e9af1", "#f1a94e", "#6cc46c", "#e8615a", "#b27ce6", "#3fc1c9", "#e6d65a", "#f17cb0"];
const DRUM_COLOR = "#9aa0a6";
const BLACK_KEYS = new Set([1, 3, 6, 8, 10]);

export function noteColor(ev) {
  return ev.channel === 9 ? DRUM_COLOR : PALETTE[ev.channel % PALETTE.length];
}

export class PianoRoll {
  constructor(canvas, { beatsBefore = 12, beatsAfter = 4 } = {}) {
    this.canvas = canvas;
    this.beatsBefore = beatsBefore;
    this.beatsAfter = beatsAfter;
    this.low = 36; // the pitch range shown grows to fit what is played
    this.high = 84;
    this.notes = []; // what may still be on screen
    this.drawn = 0; // notes on screen in the last frame (the page's tests read it)
  }

  add(events) {
    for (const ev of events) {
      this.notes.push(ev);
      this.low = Math.max(0, Math.min(this.low, ev.pitch - 2));
      this.high = Math.min(127, Math.max(this.high, ev.pitch + 2));
    }
  }

  clear() {
    this.notes = [];
  }

  draw(position) {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    const h = c.clientHeight;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    const span = this.beatsBefore + this.beatsAfter;
    const pxPerBeat = w / span;
    const playhead = this.beatsBefore * pxPerBeat;
    const rows = this.high - this.low + 1;
    const rowH = h / rows;
    const y = (pitch) => h - (pitch - this.low + 1) * rowH;

    g.fillStyle = "#15171c";
    g.fillRect(0, 0, w, h);
    for (let p = this.low; p <= this.high; p++) {
      if (BLACK_KEYS.has(p % 12)) {
        g.fillStyle = "#1b1e24";
        g.fillRect(0, y(p), w, rowH);
      }
    }
    g.strokeStyle = "#262a32"; // a line on every beat
    g.lineWidth = 1;
    for (let b = Math.ceil(position - this.beatsBefore); b < position + this.beatsAfter; b++) {
      const x = playhead + (b - position) * pxPerBeat;
      g.beginPath();
      g.moveTo(x, 0);
      g.lineTo(x, h);
      g.stroke();
    }

    const gone = position - this.beatsBefore;
    this.notes = this.notes.filter((ev) => ev.beat + ev.duration_beats >= gone);
    let drawn = 0;
    for (const ev of this.notes) {
      const x0 = playhead + (ev.beat - position) * pxPerBeat;
      const x1 = x0 + Math.max(ev.duration_beats * pxPerBeat, 2);
      if (x1 < 0 || x0 > w) continue;
      g.globalAlpha = ev.beat > position ? 0.45 : 0.6 + (0.4 * ev.velocity) / 127;
      g.fillStyle = noteColor(ev);
      g.fillRect(x0, y(ev.pitch), x1 - x0, Math.max(rowH - 1, 1));
      drawn++;
    }
    g.globalAlpha = 1;
    this.drawn = drawn;

    g.strokeStyle = "#f5f5f5";
    g.lineWidth = 2;
    g.beginPath();
    g.moveTo(playhead, 0);
    g.lineTo(playhead, h);
    g.stroke();
  }
}
