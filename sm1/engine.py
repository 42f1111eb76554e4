"""Batched generation over a pool of session slots: the one engine behind REST, WebSocket and the CLI.

The pool (one SM1State with a row per slot, plus a row of next-token logits per slot) is allocated once.
A session owns a slot, a sampler (params, generator) and a streaming decoder. `tick` runs, for every
session that wants a token, ONE batched `model.step` that reads and writes the sessions' rows in place;
before it, a capped amount of prompt/input prefill goes through the parallel `forward` in chunks, so a long
prompt never stalls the others. The step itself (padding, CUDA graphs, fused kernels): sm1/batched_step.py;
how far ahead a stream is written is sm1/pacing.py.

A session's whole condition (state row, last logits, generator, decoder clock and open note, params,
unread input) is a `_Mark`: snapshot, restore, fork and reset are all "capture a mark / apply a mark".

An Engine is not thread-safe: the server calls it from one worker thread only.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sm1 import step_triton
from sm1.batched_step import MIN_EAGER_ROWS, BatchedStep
from sm1.blob import pack_blob, split_blob
from sm1.events import NoteEvent
from sm1.model import SM1
from sm1.sampling import SamplingParams, SessionSampler, VocabMasks, sample, to_device
from sm1.state import SM1State, StateFormatError, config_fingerprint, state_floats
from sm1.tokenizer import StreamDecoder, Tokenizer

log = logging.getLogger(__name__)

SNAPSHOT_MAGIC = b"SM1SNAP\x00"
SNAPSHOT_VERSION = 2  # 2: HMAC-SHA256 signature instead of a CRC-32
_TAG_BYTES = 32  # HMAC-SHA256 over everything before it


class EngineFull(RuntimeError):
    """Every slot of the pool is taken."""


class PrefillError(RuntimeError):
    """Reading input (prompts or notes) failed: the sessions whose chunks were being read are in an unknown
    state and must be ended; every other session is untouched (the failed read wrote nothing to the pool)."""

    def __init__(self, sessions: list[EngineSession]) -> None:
        super().__init__(f"the model failed while reading the input of {len(sessions)} session(s)")
        self.sessions = sessions


class SnapshotError(ValueError):
    """A snapshot that cannot be restored here: damaged, another version, or made by another checkpoint."""


@dataclass(eq=False)  # identity: a session is itself, whatever its fields hold
class EngineSession:
    """One stream's slot and the pure-Python state that goes with it."""

    slot: int | None
    sampler: SessionSampler
    decoder: StreamDecoder
    pending: deque[int] = field(default_factory=deque)  # input the model has not read yet (prompt, notes)
    token_index: int = 0  # tokens sampled so far
    seq: int = 0  # tokens sampled so far that completed notes: numbers a stream's `events` frames
    start_beat: float = 0.0  # the clock where generation began (end of the prompt)
    initial: _Mark | None = None  # where `reset` goes back to

    @property
    def beat(self) -> float:
        """How far the stream has been written, in beats (the generated horizon)."""
        return self.decoder.beat

    @property
    def params(self) -> SamplingParams:
        return self.sampler.params


@dataclass
class _Mark:
    """Everything needed to put a session back exactly where it was."""

    state: SM1State  # one row
    logits: Tensor  # (V,) float32
    sampler: dict[str, Any]
    decoder: dict[str, Any]
    pending: list[int]
    token_index: int
    seq: int
    start_beat: float


@dataclass(slots=True)  # one per session a tick: not frozen, whose __init__ costs 3x
class Generated:
    """What one tick produced for one session."""

    session: EngineSession
    token: int
    index: int  # the token's place among the tokens the session sampled (0, 1, ...)
    events: list[NoteEvent]
    seq: int | None  # the number of this batch of events among the session's (None: no events)


@dataclass(frozen=True)
class Clip:
    """A finished clip: its notes (beats on the piece's clock), the seed that made it, tokens sampled."""

    events: list[NoteEvent]
    seed: int
    tokens: int
    start_beat: float


@dataclass(frozen=True)
class ClipLength:
    """When a whole clip is done: after `beats` of music or `tokens` tokens (max_tokens bounds both)."""

    beats: float | None = None
    tokens: int | None = None
    max_tokens: int = 8192  # a model that never moves time on still stops

    def done(self, s: EngineSession) -> bool:
        if s.pending:
            return False
        if self.tokens is not None and s.token_index >= self.tokens:
            return True
        if self.beats is not None and s.beat - s.start_beat >= self.beats:
            return True
        return s.token_index >= self.max_tokens

    def keep(self, s: EngineSession, ev: NoteEvent) -> bool:
        return self.beats is None or ev.beat < s.start_beat + self.beats


class Engine:
    def __init__(
        self,
        model: SM1,
        tokenizer: Tokenizer,
        capacity: int,
        *,
        prefill_chunk: int = 128,
        prefill_budget: int = 128,
        cuda_graphs: bool = True,
        fused_step: bool = True,
        snapshot_key: bytes | None = None,
    ) -> None:
        if not isinstance(model, SM1):
            raise TypeError(f"the engine serves SM1 models (slot-pool step), not {type(model).__name__}")
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.model, self.tokenizer, self.config = model, tokenizer, model.config
        self.capacity = capacity
        self.prefill_chunk, self.prefill_budget = prefill_chunk, prefill_budget
        self.device = model.embedding.weight.device
        self.pool = model.allocate_state(capacity + 1, device=self.device)  # last row: padding scratch
        self.logits = torch.zeros(capacity + 1, tokenizer.vocab_size, device=self.device)  # (S+1, V)
        self._free = list(range(capacity))  # a heap: the lowest free slot first, so sessions pack together
        self._prefilling: dict[EngineSession, None] = {}  # insertion order = round robin
        self.masks = VocabMasks(tokenizer, self.device)
        fused = fused_step and self.device.type == "cuda" and step_triton.available(self.device)
        self._batched = BatchedStep(model, self.pool, capacity, cuda_graphs, fused)
        self._step = self._batched  # the call the ticks make (server/faults.py can wrap it)
        self._ready: tuple[tuple[int, ...], Tensor] = ((), torch.empty(0, dtype=torch.long))  # see _slots_on_device
        self.model_id = weights_digest(model)
        # Snapshots are signed: with a secret key (shared by the replicas that restore each other's sessions) a
        # forged or altered one is refused; without one the key is the public model id, which catches damage only.
        self._snapshot_key = snapshot_key or self.model_id.encode()
        self.state_floats = state_floats(self.config)
        self.state_bytes = self.pool.select([0]).nbytes()

    # ---- slots ------------------------------------------------------------------------------------------
    def free_rows(self, batch: int) -> int:
        """How many more sessions a tick of `batch` could step at no extra cost (rows it pads anyway)."""
        return self._batched.rows(max(batch, 1)) - batch

    @property
    def active(self) -> int:
        return self.capacity - len(self._free)

    @property
    def has_pending_input(self) -> bool:
        return bool(self._prefilling)

    def admit(self, prompt: list[int] | None, params: SamplingParams) -> EngineSession:
        """A new session in a free slot; `prompt` (token ids, bos first; None = an empty piece) is prefilled
        over the next ticks."""
        s = self._new_session(params)
        try:
            self._zero(s.slot)
            self.feed(s, prompt if prompt else [self.tokenizer.bos_id])
            s.start_beat = s.beat
            s.initial = self._capture(s)  # allocates (state row, logits): where CUDA runs out of memory
        except BaseException:
            self.release(s)  # the slot goes back to the pool
            raise
        return s

    def feed(self, s: EngineSession, tokens: list[int]) -> None:
        """Input the model must read before it samples again (a prompt, or a person's notes as tokens)."""
        for t in tokens:
            s.decoder.feed(t)
            s.sampler.follow(t)
        s.pending.extend(tokens)
        if s.pending:
            self._prefilling[s] = None

    def feed_notes(self, s: EngineSession, events: list[NoteEvent]) -> int:
        """A person's notes (beats on the stream's clock), fed after what the stream wrote; returns #tokens."""
        tokens = self.tokenizer.encode_live(events, s.decoder)
        self.feed(s, tokens)
        return len(tokens)

    def release(self, s: EngineSession) -> None:
        if s.slot is None:
            return
        self._prefilling.pop(s, None)
        heapq.heappush(self._free, s.slot)
        s.slot = None

    def set_params(self, s: EngineSession, params: SamplingParams, reseed: bool) -> None:
        s.sampler.set_params(params, reseed)

    def reset(self, s: EngineSession) -> None:
        """Back to where the session began (after its prompt, or where it was restored or forked); `seq`
        goes on counting, so a client never sees numbers repeat."""
        seq = s.seq
        self._apply(s, s.initial)
        s.seq = seq

    def fork(self, s: EngineSession, seed: int | None = None) -> EngineSession:
        """An independent copy in another slot; same future unless a new `seed` is given."""
        child = self._new_session(s.params)
        self._apply(child, self._capture(s))
        if seed is not None:
            child.sampler.set_params(child.params.updated({"seed": seed}), reseed=True)
        child.initial = self._capture(child)
        return child

    def snapshot(self, s: EngineSession, extra: dict[str, Any] | None = None) -> bytes:
        """Opaque, versioned bytes: state row, last logits, generator, decoder, params, unread input, and
        the caller's `extra` (JSON-able). Restores on any server running the same checkpoint."""
        m = self._capture(s)
        sampler = dict(m.sampler)
        generator = sampler.pop("generator")
        sections = [m.state.to_bytes(self.config), m.logits.cpu().numpy().tobytes(), generator]
        header = {
            "format": "sm1-snapshot",
            "model": self.model_id,
            "config": config_fingerprint(self.config),
            "vocab": self.tokenizer.fingerprint,
            "sampler": sampler,
            "decoder": m.decoder,
            "pending": m.pending,
            "token_index": m.token_index,
            "seq": m.seq,
            "start_beat": m.start_beat,
            "extra": extra or {},
            "sections": [len(b) for b in sections],
        }
        head = json.dumps(header).encode()
        body = pack_blob(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, head, b"".join(sections))
        return body + self._sign(body)

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self._snapshot_key, body, hashlib.sha256).digest()

    def restore(self, data: bytes) -> tuple[EngineSession, dict[str, Any]]:
        """A new session exactly where the snapshot was taken; returns it and the snapshot's `extra`."""
        mark, extra = self._parse_snapshot(data)
        s = self._new_session(SamplingParams())
        try:
            self._apply(s, mark)
        except (ValueError, RuntimeError, KeyError, TypeError) as e:
            self.release(s)
            raise SnapshotError(f"snapshot is malformed: {e}") from e
        s.initial = mark
        return s, extra

    # ---- generation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def tick(self, sessions: list[EngineSession]) -> list[Generated]:
        """Some prefill, then one token for each of `sessions` that has read all its input.

        Prefill reads about `prefill_budget` tokens while others wait for their token (a tick's length is
        their latency: at least one chunk, whole chunks only), and four chunks' worth when nobody does."""
        waiting = any(s.slot is not None and not s.pending for s in sessions)
        self._prefill(self.prefill_budget if waiting else max(self.prefill_budget, 4 * self.prefill_chunk))
        ready = sorted((s for s in sessions if s.slot is not None and not s.pending), key=lambda s: s.slot)
        if not ready:
            return []
        slots = self._slots_on_device(tuple(s.slot for s in ready))  # (B,)
        first, last = ready[0].slot, ready[-1].slot
        rows = slice(first, last + 1) if last - first + 1 == len(ready) else None  # the usual case when busy
        tokens = sample(
            self.logits[rows] if rows is not None else self.logits.index_select(0, slots),
            temperature=torch.tensor([s.params.temperature for s in ready]),
            top_k=torch.tensor([s.params.top_k for s in ready]),
            top_p=torch.tensor([s.params.top_p for s in ready]),
            uniforms=torch.tensor([s.sampler.uniform() for s in ready], dtype=torch.float64),
            allowed=torch.stack([s.sampler.allowed(s.decoder) for s in ready]),
        )
        logits = self._step(tokens, slots, rows)
        if rows is not None:
            self.logits[rows] = logits
        else:
            self.logits.index_copy_(0, slots, logits)
        out = []
        for s, t in zip(ready, tokens.tolist(), strict=True):
            s.sampler.observe(t, s.decoder)
            events = s.decoder.feed(t)
            out.append(Generated(s, t, s.token_index, events, s.seq if events else None))
            s.token_index += 1
            s.seq += bool(events)
        return out

    def _slots_on_device(self, slots: tuple[int, ...]) -> Tensor:
        """The ready sessions' slots on the device: the same tensor while they stay the same, which the CUDA-graph
        step then need not copy again (sm1/batched_step.py's GraphInputs), and no host-to-device copy either."""
        if self._ready[0] != slots:
            self._ready = (slots, to_device(torch.tensor(slots), self.device))
        return self._ready[1]

    def generate(self, prompt: list[int] | None, params: SamplingParams, length: ClipLength) -> Clip:
        """A whole clip, alone, as fast as possible (the CLI's path; the server batches clips in its ticks)."""
        s = self.admit(prompt, params)
        try:
            events: list[NoteEvent] = []
            while not length.done(s):
                events += [ev for g in self.tick([s]) for ev in g.events if length.keep(s, ev)]
            return Clip(events, s.params.seed, s.token_index, s.start_beat)
        finally:
            self.release(s)

    # ---- internals --------------------------------------------------------------------------------------
    def _new_session(self, params: SamplingParams) -> EngineSession:
        if not self._free:
            raise EngineFull(f"all {self.capacity} session slots are in use")
        return EngineSession(
            slot=heapq.heappop(self._free), sampler=SessionSampler(params, self.masks), decoder=self.tokenizer.decoder()
        )

    def _zero(self, slot: int) -> None:
        self.pool.ssm[:, slot].zero_()
        self.pool.conv[:, slot].zero_()
        self.logits[slot].zero_()

    def _prefill(self, budget: int) -> None:
        """Whole chunks, round robin, until `budget` tokens are read (the last read may overrun it). A chunk's
        length depends on the session's own input only, never on who else is waiting: the scan and the
        matmuls of a prompt then add up in the same order every time, and so give the same bits.

        Chunks of one length, MIN_EAGER_ROWS tokens or more, are read together in one forward: on a GPU a
        forward is launch-bound, so 32 sessions' chunks cost about what one does (hundreds of streams starting
        at once were otherwise minutes of one-chunk reads), and from that many rows on the CPU's matmuls give
        each row the same bits whatever else is in the batch. Shorter chunks are read alone."""
        while self._prefilling and budget > 0:
            group = self._next_chunks(budget)
            n = min(len(group[0].pending), self.prefill_chunk)
            chunk = to_device(torch.tensor([[s.pending.popleft() for _ in range(n)] for s in group]), self.device)
            try:
                self._read(group, chunk)
            except Exception as e:
                raise PrefillError(group) from e
            budget -= n * len(group)
            for s in group:
                if s.pending:
                    self._prefilling[s] = None  # to the back of the queue

    def _next_chunks(self, budget: int) -> list[EngineSession]:
        """The first waiting session and, if its chunk is long enough, the next ones whose chunks have the same
        length, within `budget` tokens; taken off the queue."""
        first = next(iter(self._prefilling))
        n = min(len(first.pending), self.prefill_chunk)
        group = [first]
        if n >= MIN_EAGER_ROWS:
            same = (s for s in self._prefilling if s is not first and min(len(s.pending), self.prefill_chunk) == n)
            group += itertools.islice(same, max(0, budget // n - 1))
        for s in group:
            del self._prefilling[s]
        return group

    def _read(self, group: list[EngineSession], chunk: Tensor) -> None:
        """The model reads `chunk` (k, n), row i from session i's state; their slots and last logits move on."""
        slots = [s.slot for s in group]
        logits, state = self.model(chunk, self.pool.select(slots))
        self.pool.assign(slots, state)
        self.logits[slots] = logits[:, -1]

    def _capture(self, s: EngineSession) -> _Mark:
        return _Mark(
            state=self.pool.select([s.slot]),
            logits=self.logits[s.slot].clone(),
            sampler=s.sampler.state_dict(),
            decoder=s.decoder.state_dict(),
            pending=list(s.pending),
            token_index=s.token_index,
            seq=s.seq,
            start_beat=s.start_beat,
        )

    def _apply(self, s: EngineSession, m: _Mark) -> None:
        s.sampler.load_state_dict(m.sampler)
        s.decoder.load_state_dict(m.decoder)
        self.pool.assign([s.slot], m.state)
        self.logits[s.slot] = m.logits.to(self.device)
        s.pending = deque(m.pending)
        s.token_index, s.seq, s.start_beat = m.token_index, m.seq, m.start_beat
        self._prefilling.pop(s, None)
        if s.pending:
            self._prefilling[s] = None

    def _parse_snapshot(self, data: bytes) -> tuple[_Mark, dict[str, Any]]:
        body, tag = data[:-_TAG_BYTES], data[-_TAG_BYTES:]
        head, payload = split_blob(body, SNAPSHOT_MAGIC, SNAPSHOT_VERSION, "session snapshot", SnapshotError)
        try:
            h = json.loads(head)
            sizes = [int(n) for n in h["sections"]]
        except (ValueError, KeyError, TypeError) as e:
            h, unreadable = None, e
        # the header is read before the signature is checked only to say why a snapshot is refused
        foreign = h is not None and (h.get("model") != self.model_id or h.get("vocab") != self.tokenizer.fingerprint)
        if foreign:
            raise SnapshotError("snapshot was made by another checkpoint; restore it on a server running that one")
        if not hmac.compare_digest(self._sign(body), tag):
            raise SnapshotError("snapshot is damaged or was not signed by this server (signature does not match)")
        if h is None:
            raise SnapshotError(f"snapshot header is unreadable: {unreadable}")
        if len(sizes) != 3 or sum(sizes) != len(payload):
            raise SnapshotError("snapshot sections do not add up")
        state_b, logits_b, generator = payload[: sizes[0]], payload[sizes[0] : -sizes[2]], payload[-sizes[2] :]
        V = self.tokenizer.vocab_size
        if len(logits_b) != 4 * V:
            raise SnapshotError("snapshot logits do not fit this vocabulary")
        try:
            state = SM1State.from_bytes(state_b, self.config, device=self.device)
        except StateFormatError as e:
            raise SnapshotError(f"snapshot state: {e}") from e
        if state.batch_size != 1:
            raise SnapshotError("snapshot must hold exactly one session")
        try:
            mark = _Mark(
                state=state,
                logits=torch.frombuffer(bytearray(logits_b), dtype=torch.float32),
                sampler={**h["sampler"], "generator": generator},
                decoder=h["decoder"],
                pending=[int(t) for t in h["pending"]],
                token_index=int(h["token_index"]),
                seq=int(h["seq"]),
                start_beat=float(h["start_beat"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SnapshotError(f"snapshot header is incomplete: {e}") from e
        if any(not 0 <= t < V for t in mark.pending):
            raise SnapshotError("snapshot holds token ids outside the vocabulary")
        extra = h.get("extra")
        return mark, extra if isinstance(extra, dict) else {}


def weights_digest(model: torch.nn.Module) -> str:
    """Names the weights (not the file): a snapshot restores only where the same weights run."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy())
    return h.hexdigest()[:16]
