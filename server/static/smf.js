// Standard MIDI files in the browser: what was played, as a type 0 .mid; and base64 for the prompt upload.

const PPQ = 480;

function vlq(n) {
  const out = [n & 0x7f];
  while ((n >>= 7)) out.unshift((n & 0x7f) | 0x80);
  return out;
}

const u32 = (n) => [(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255];

// events: {pitch, velocity, program, channel, beat, duration_beats}, beats from 0.
export function midiFile(events, tempoBpm) {
  const timeline = []; // [tick, order, bytes]: at one tick, note-offs (0) before program changes (1) and note-ons (2)
  const programs = new Map();
  const sounding = new Map(); // channel*128+pitch -> its note-off in `timeline`
  for (const ev of [...events].sort((a, b) => a.beat - b.beat)) {
    const on = Math.round(ev.beat * PPQ);
    const off = Math.max(on + 1, Math.round((ev.beat + ev.duration_beats) * PPQ));
    if (ev.channel !== 9 && programs.get(ev.channel) !== ev.program) {
      programs.set(ev.channel, ev.program);
      timeline.push([on, 1, [0xc0 | ev.channel, ev.program]]);
    }
    const key = ev.channel * 128 + ev.pitch;
    const earlier = sounding.get(key);
    if (earlier && earlier[0] > on) earlier[0] = on; // a pitch struck again ends the note still sounding
    const noteOff = [off, 0, [0x80 | ev.channel, ev.pitch, 0]];
    timeline.push([on, 2, [0x90 | ev.channel, ev.pitch, ev.velocity]], noteOff);
    sounding.set(key, noteOff);
  }
  timeline.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const usPerBeat = Math.round(60e6 / tempoBpm);
  const track = [0, 0xff, 0x51, 3, (usPerBeat >> 16) & 255, (usPerBeat >> 8) & 255, usPerBeat & 255];
  let now = 0;
  for (const [tick, , bytes] of timeline) {
    track.push(...vlq(tick - now), ...bytes);
    now = tick;
  }
  track.push(0, 0xff, 0x2f, 0);
  const header = [0x4d, 0x54, 0x68, 0x64, ...u32(6), 0, 0, 0, 1, (PPQ >> 8) & 255, PPQ & 255];
  return new Uint8Array([...header, 0x4d, 0x54, 0x72, 0x6b, ...u32(track.length), ...track]);
}

export function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}
