// The page: controls -> one /v1/stream session -> the player (synth, Web MIDI) and the piano roll.

import { Player } from "./player.js";
import { PianoRoll } from "./roll.js";
import { midiFile, toBase64 } from "./smf.js";
import { Stream, closeMessage, streamUrl } from "./stream.js";

const $ = (id) => document.getElementById(id);
const CLOCK_EVERY_MS = 500;

const player = new Player();
const roll = new PianoRoll($("roll"));
const state = { phase: "idle", session: null, model: null, startBeat: 0, received: 0, errors: [] };
let stream = null;
let clockTimer = null;
window.sm1 = { state, player, roll }; // for the tests and the console

// ---- what the person sees ----------------------------------------------------------------------------
function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
  if (text) state.errors.push(text);
}

function setPhase(phase, text) {
  state.phase = phase;
  $("status").dataset.state = phase;
  $("status").textContent = text;
  const live = phase === "playing" || phase === "paused";
  $("start").disabled = live || phase === "connecting";
  $("pause").disabled = !live;
  $("pause").textContent = phase === "paused" ? "Resume" : "Pause";
  $("stop").disabled = !(live || phase === "connecting");
  $("download").disabled = player.played.length === 0;
  $("prompt").disabled = live;
}

function params() {
  const p = { temperature: Number($("temperature").value), top_p: Number($("top-p").value) };
  if ($("seed").value !== "") p.seed = Number.parseInt($("seed").value, 10);
  return p;
}

// ---- the stream ----------------------------------------------------------------------------------------
async function start() {
  player.unlock(); // now, while the click counts as the person's gesture
  showMessage("");
  let prompt = null;
  const file = $("prompt").files[0];
  if (file) prompt = toBase64(await file.arrayBuffer());
  const tempo = Number($("tempo").value);
  roll.clear();
  state.received = 0;
  let refused = false;
  setPhase("connecting", "connecting…");
  stream = new Stream(streamUrl($("api-key").value), {
    onReady(frame) {
      Object.assign(state, { session: frame.session, model: frame.model, startBeat: frame.beat });
      player.start(frame.beat, tempo);
      setPhase("playing", `playing · session ${frame.session} · model ${frame.model}`);
      clearInterval(clockTimer);
      clockTimer = setInterval(reportClock, CLOCK_EVERY_MS);
    },
    onEvents(events) {
      state.received += events.length;
      player.add(events);
      roll.add(events);
    },
    onServerError(frame) {
      showMessage(`The server refused: ${frame.message} (${frame.code})`);
      if (state.phase === "connecting") {
        refused = true;
        stream.close(); // no session was made: nothing to stop
      }
    },
    onEnd() {},
    onClose(code, reason, stopped) {
      clearInterval(clockTimer);
      player.stop();
      const started = state.phase !== "connecting";
      if (stopped && started) {
        setPhase("stopped", "stopped");
        return;
      }
      if (!refused) {
        const cannotReach = !started && code === 1006;
        showMessage(cannotReach ? `Cannot reach the SM1 server at ${location.host}.` : `${closeMessage(code, reason)}.`);
      }
      setPhase("error", started ? "disconnected" : "not connected");
    },
  });
  stream.open({ prompt, params: params(), tempo_bpm: tempo });
}

function reportClock() {
  if (state.phase === "playing") {
    stream.send({ type: "clock", beat: Math.max(0, player.position()), tempo_bpm: player.tempo });
  }
}

async function pauseOrResume() {
  if (state.phase === "playing") {
    stream.send({ type: "pause" });
    await player.pause();
    setPhase("paused", `paused · session ${state.session}`);
  } else if (state.phase === "paused") {
    await player.resume();
    stream.send({ type: "resume" });
    setPhase("playing", `playing · session ${state.session} · model ${state.model}`);
    reportClock();
  }
}

function stop() {
  if (stream) stream.stop();
  player.stop();
}

function download() {
  const now = player.position();
  const played = player.played
    .filter((ev) => ev.beat <= now)
    .map((ev) => ({ ...ev, beat: ev.beat - state.startBeat }));
  const blob = new Blob([midiFile(played, player.tempo)], { type: "audio/midi" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `sm1-${state.session || "stream"}.mid`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

// ---- controls --------------------------------------------------------------------------------------------
function bindSlider(id, digits, onChange) {
  const input = $(id);
  const show = () => ($(`${id}-value`).textContent = Number(input.value).toFixed(digits));
  input.addEventListener("input", show);
  input.addEventListener("change", onChange);
  show();
}

function sendParams(changes) {
  if (state.phase === "playing" || state.phase === "paused") stream.send({ type: "params", ...changes });
}

bindSlider("tempo", 0, () => {
  const bpm = Number($("tempo").value);
  if (state.phase !== "playing" && state.phase !== "paused") return;
  player.setTempo(bpm);
  stream.send({ type: "clock", beat: Math.max(0, player.position()), tempo_bpm: bpm });
});
bindSlider("temperature", 2, () => sendParams({ temperature: Number($("temperature").value) }));
bindSlider("top-p", 2, () => sendParams({ top_p: Number($("top-p").value) }));
$("seed").addEventListener("change", () => {
  if ($("seed").value !== "") sendParams({ seed: Number.parseInt($("seed").value, 10) });
});
$("start").addEventListener("click", start);
$("pause").addEventListener("click", pauseOrResume);
$("stop").addEventListener("click", stop);
$("download").addEventListener("click", download);
$("synth").addEventListener("change", () => (player.synthOn = $("synth").checked));

async function setUpMidi() {
  const select = $("midi-out");
  if (!navigator.requestMIDIAccess) {
    select.disabled = true;
    select.title = "this browser has no Web MIDI";
    return;
  }
  try {
    const access = await navigator.requestMIDIAccess();
    const refresh = () => {
      const chosen = select.value;
      select.length = 1;
      for (const out of access.outputs.values()) select.add(new Option(out.name, out.id));
      select.value = chosen;
    };
    access.onstatechange = refresh;
    refresh();
    select.addEventListener("change", () => {
      player.allNotesOff();
      player.midiOut = access.outputs.get(select.value) || null;
    });
  } catch (e) {
    select.disabled = true;
    select.title = `Web MIDI is not allowed here (${e.message})`;
  }
}

function frame() {
  roll.draw(player.position());
  const beat = Math.max(0, player.position() - state.startBeat);
  $("info").textContent = state.session
    ? `beat ${beat.toFixed(1)} · ${state.received} notes received · ${player.played.length} played` +
      (player.skipped ? ` · ${player.skipped} skipped (late)` : "")
    : "Press Start: notes appear here as the model writes them.";
  if (player.played.length && $("download").disabled && state.phase !== "connecting") $("download").disabled = false;
  requestAnimationFrame(frame);
}

setPhase("idle", "not connected");
setUpMidi();
requestAnimationFrame(frame);
