// Plays note events (beats) on the AudioContext clock: a small WebAudio synth, and Web MIDI out where the
// browser has it. Notes are handed to the audio clock only a short horizon ahead (the "two clocks"
// pattern), so a tempo change moves every note not yet started.

const HORIZON_S = 0.12; // how far ahead of the audio clock notes are scheduled
const TICK_MS = 25; // how often the scheduler looks
const LATE_S = 0.05; // a note this late is skipped, not played out of time
const DRUM_CHANNEL = 9;

const midiToHz = (pitch) => 440 * 2 ** ((pitch - 69) / 12);

export class Player {
  constructor() {
    this.ctx = null;
    this.master = null;
    this.midiOut = null; // a Web MIDI output, or null
    this.synthOn = true;
    this.anchorBeat = 0;
    this.anchorTime = 0;
    this.tempo = 120;
    this.queue = []; // events not yet scheduled, in beat order
    this.played = []; // events handed to the clock
    this.skipped = 0;
    this.channels = new Set();
    this.timer = null;
  }

  // Browsers let audio start only from a person's click: call this in the click handler itself.
  unlock() {
    if (!this.ctx) {
      this.ctx = new AudioContext({ latencyHint: "interactive" });
      this.master = this.ctx.createGain();
      this.master.gain.value = 0.25;
      this.master.connect(this.ctx.destination);
      this.noise = this.noiseBuffer();
    }
    return this.ctx.resume();
  }

  // The stream's first beat plays `latency` seconds from now.
  start(beat, tempo, latency = 0.15) {
    this.unlock();
    this.queue = [];
    this.played = [];
    this.skipped = 0;
    this.tempo = tempo;
    this.anchorBeat = beat;
    this.anchorTime = this.ctx.currentTime + latency;
    clearInterval(this.timer);
    this.timer = setInterval(() => this.schedule(), TICK_MS);
  }

  get now() {
    return this.ctx ? this.ctx.currentTime : 0;
  }

  timeOf(beat) {
    return this.anchorTime + ((beat - this.anchorBeat) * 60) / this.tempo;
  }

  position() {
    return this.anchorBeat + ((this.now - this.anchorTime) * this.tempo) / 60;
  }

  setTempo(bpm) {
    this.anchorBeat = this.position();
    this.anchorTime = this.now;
    this.tempo = bpm;
  }

  add(events) {
    for (const ev of events) this.queue.push(ev);
    this.queue.sort((a, b) => a.beat - b.beat);
    this.schedule();
  }

  // The audio clock stands still while paused: scheduled notes wait, the position does not move.
  pause() {
    return this.ctx ? this.ctx.suspend() : Promise.resolve();
  }

  resume() {
    return this.ctx ? this.ctx.resume() : Promise.resolve();
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
    this.queue = [];
    if (this.ctx) {
      this.master.disconnect();
      this.master = this.ctx.createGain();
      this.master.gain.value = 0.25;
      this.master.connect(this.ctx.destination);
      this.ctx.suspend(); // the roll stands still where the music stopped
    }
    this.allNotesOff();
  }

  schedule() {
    if (!this.ctx || this.ctx.state !== "running") return;
    const now = this.now;
    while (this.queue.length && this.timeOf(this.queue[0].beat) < now + HORIZON_S) {
      const ev = this.queue.shift();
      const at = this.timeOf(ev.beat);
      if (at < now - LATE_S) {
        this.skipped += 1;
        continue;
      }
      const start = Math.max(at, now);
      const end = Math.max(start + 0.02, this.timeOf(ev.beat + ev.duration_beats));
      this.played.push(ev);
      this.channels.add(ev.channel);
      if (this.synthOn) this.voice(ev, start, end);
      if (this.midiOut) this.sendMidi(ev, start, end);
    }
  }

  // ---- the synth: a triangle with an envelope; drums are filtered noise (or a thump for the kicks) ----
  voice(ev, start, end) {
    const ctx = this.ctx;
    const gain = ctx.createGain();
    const level = (ev.velocity / 127) ** 2 * 0.5;
    gain.connect(this.master);
    if (ev.channel === DRUM_CHANNEL) {
      const kick = ev.pitch <= 36;
      const src = kick ? ctx.createOscillator() : ctx.createBufferSource();
      if (kick) {
        src.frequency.setValueAtTime(120, start);
        src.frequency.exponentialRampToValueAtTime(45, start + 0.12);
      } else {
        src.buffer = this.noise;
        const filter = ctx.createBiquadFilter();
        filter.type = "highpass";
        filter.frequency.value = ev.pitch >= 42 ? 7000 : 1500;
        src.connect(filter);
        filter.connect(gain);
      }
      if (kick) src.connect(gain);
      gain.gain.setValueAtTime(level, start);
      gain.gain.exponentialRampToValueAtTime(0.001, start + (kick ? 0.25 : 0.12));
      src.start(start);
      src.stop(start + 0.3);
      return;
    }
    const osc = ctx.createOscillator();
    osc.type = "triangle";
    osc.frequency.value = midiToHz(ev.pitch);
    osc.connect(gain);
    gain.gain.setValueAtTime(0, start);
    gain.gain.linearRampToValueAtTime(level, start + 0.005);
    gain.gain.setTargetAtTime(level * 0.6, start + 0.005, 0.2);
    gain.gain.setTargetAtTime(0, end, 0.03);
    osc.start(start);
    osc.stop(end + 0.2);
  }

  noiseBuffer() {
    const buf = this.ctx.createBuffer(1, this.ctx.sampleRate * 0.3, this.ctx.sampleRate);
    const data = buf.getChannelData(0);
    for (let i = 0; i < data.length; i++) data[i] = Math.random() * 2 - 1;
    return buf;
  }

  // ---- Web MIDI: timestamps are in performance.now() milliseconds ----
  sendMidi(ev, start, end) {
    const ms = (t) => performance.now() + (t - this.now) * 1000;
    if (ev.channel !== DRUM_CHANNEL) this.midiOut.send([0xc0 | ev.channel, ev.program], ms(start));
    this.midiOut.send([0x90 | ev.channel, ev.pitch, ev.velocity], ms(start));
    this.midiOut.send([0x80 | ev.channel, ev.pitch, 0], ms(end));
  }

  // No note left hanging on the MIDI output: All Notes Off on every channel used.
  allNotesOff() {
    if (!this.midiOut) return;
    this.midiOut.clear?.(); // drop what is queued with future timestamps (where the browser supports it)
    for (const ch of this.channels) this.midiOut.send([0xb0 | ch, 123, 0]);
  }
}
