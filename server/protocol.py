"""The wire protocol: what clients may send (validated pydantic models) and what the server sends back.

Client -> server messages are validated here, one model per `type`. Server -> client frames are built by
the small functions at the bottom (plain dicts: an `events` frame goes out thousands of times a second).
docs/protocol.md describes every message, field, error code and close code; keep the two in step.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from sm1.events import NoteEvent
from sm1.sampling import MAX_SEED, SamplingParams


def _note(value: Any) -> NoteEvent:
    return value if isinstance(value, NoteEvent) else NoteEvent.from_json(value)


# {"type": "note", pitch, velocity, program, channel, beat, duration_beats}, checked by NoteEvent itself
Note = Annotated[NoteEvent, BeforeValidator(_note)]
# a MIDI file as base64, or the notes themselves
Prompt = str | Annotated[list[Note], Field(max_length=100_000)] | None


class ErrorCode:
    """`code` of an `error` frame (WebSocket) and of an error body (REST)."""

    BAD_JSON = "bad_json"  # the frame is not a JSON object
    BAD_FRAME = "bad_frame"  # a binary frame (the protocol is JSON text)
    UNKNOWN_TYPE = "unknown_type"  # `type` missing or not a message type
    INVALID_FIELD = "invalid_field"  # a field is missing, of the wrong type or out of range
    NOT_STARTED = "not_started"  # a message that needs a session before `start`
    ALREADY_STARTED = "already_started"  # a second `start` on one connection
    BAD_PROMPT = "bad_prompt"  # the prompt is not base64 of a readable MIDI file
    PROMPT_TOO_LARGE = "prompt_too_large"  # prompt over max_prompt_bytes / max_prompt_tokens
    CLIP_TOO_LONG = "clip_too_long"  # a clip over max_clip_beats / max_clip_tokens
    UNKNOWN_SESSION = "unknown_session"  # no session with that id (expired, deleted, never was)
    SESSION_BUSY = "session_busy"  # the session is streaming to another connection
    BAD_SNAPSHOT = "bad_snapshot"  # snapshot bytes that cannot be restored here
    SERVER_FULL = "server_full"  # every session slot is in use (WebSocket: then close 1013)
    SHUTTING_DOWN = "shutting_down"  # the server is draining (WebSocket: then close 1001)
    UNAUTHORIZED = "unauthorized"  # missing or wrong API key (REST 401, WebSocket close 1008)
    TOO_MANY_MESSAGES = "too_many_messages"  # flood (close 1008)
    FRAME_TOO_LARGE = "frame_too_large"  # over max_frame_bytes (close 1009)
    BODY_TOO_LARGE = "body_too_large"  # REST body over the limit (413)
    LENGTH_REQUIRED = "length_required"  # REST body without Content-Length (411)
    INTERNAL = "internal"  # a bug: the server logs it


class CloseCode:
    """WebSocket close codes (RFC 6455) the server uses."""

    NORMAL = 1000  # after `stop`, or the session was deleted
    GOING_AWAY = 1001  # the server is shutting down (after an `end` frame)
    POLICY = 1008  # invalid API key, message flood
    TOO_BIG = 1009  # a frame over max_frame_bytes
    INTERNAL = 1011  # a server bug
    TRY_LATER = 1013  # every session slot is in use


class StreamOptions(BaseModel):
    """How a stream starts: shared by the WebSocket `start` message and POST /v1/sessions."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt = Field(None, description="a MIDI file as base64, or a list of note events")
    params: SamplingParams | None = Field(None, description="sampling params (defaults: temperature 1, no filters)")
    tempo_bpm: float | None = Field(None, ge=1, le=1000, description="playback tempo (default 120)")
    lookahead_beats: float | None = Field(None, gt=0, le=64, description="how far ahead of playback to write")
    realtime: bool | None = Field(None, description="false: generate as fast as the client reads")


class StartMessage(StreamOptions):
    type: Literal["start"]
    session: str | None = Field(None, max_length=64, description="attach to an existing session instead")


class ParamsMessage(BaseModel):
    """Any of temperature, top_k, top_p, seed, constraints; checked against SamplingParams."""

    model_config = ConfigDict(extra="allow")
    type: Literal["params"]

    def changes(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class NotesMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["notes"]
    events: list[Note] = Field(max_length=1024)


class ClockMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["clock"]
    beat: float = Field(ge=0, allow_inf_nan=False, description="the client's playback position")
    tempo_bpm: float | None = Field(None, ge=1, le=1000, description="the client's tempo, if it changed")


class _Bare(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PauseMessage(_Bare):
    type: Literal["pause"]


class ResumeMessage(_Bare):
    type: Literal["resume"]


class ResetMessage(_Bare):
    type: Literal["reset"]


class SnapshotMessage(_Bare):
    type: Literal["snapshot"]


class StopMessage(_Bare):
    type: Literal["stop"]


ClientMessage = Annotated[
    StartMessage
    | ParamsMessage
    | NotesMessage
    | ClockMessage
    | PauseMessage
    | ResumeMessage
    | ResetMessage
    | SnapshotMessage
    | StopMessage,
    Field(discriminator="type"),
]
client_message = TypeAdapter(ClientMessage)
MESSAGE_TYPES = ("start", "params", "notes", "clock", "pause", "resume", "reset", "snapshot", "stop")


def describe_errors(e: ValidationError, skip: int = 0) -> str:
    """'field.path: what is wrong' for the first few errors (`skip` leading loc parts, e.g. the message type)."""
    parts = []
    for err in e.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"][skip:] if not str(p).startswith("function-")) or "message"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


# ---- REST bodies ----------------------------------------------------------------------------------------
class GenerateRequest(SamplingParams):
    """A whole clip: the sampling params (flat) plus what to continue and for how long."""

    prompt: Prompt = Field(None, description="a MIDI file as base64, or a list of note events")
    length_beats: float | None = Field(None, gt=0, description="music to write, in beats (default 16)")
    length_tokens: int | None = Field(None, gt=0, description="or: tokens to sample")
    tempo_bpm: float = Field(120.0, ge=1, le=1000, description="tempo written into the MIDI file")
    program: int | None = Field(None, ge=0, le=127, description="play the clip on this General MIDI program")
    format: Literal["midi", "json"] | None = Field(None, description="default: by Accept (audio/midi if absent)")
    include_prompt: bool = Field(False, description="put the prompt's notes before the continuation")

    def sampling(self) -> SamplingParams:
        params = SamplingParams.model_validate(self.model_dump(include=set(SamplingParams.model_fields)))
        if self.program is None:
            return params
        constraints = params.constraints.model_copy(update={"programs": (self.program,), "drums": False})
        return params.model_copy(update={"constraints": constraints})


class SessionCreate(StreamOptions):
    snapshot: str | None = Field(None, description="restore this snapshot (base64) instead of starting afresh")


class ForkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="a new seed for the fork (default: same future)")


class SessionInfo(BaseModel):
    session: str
    model: str
    state_bytes: int
    vocab_size: int
    beat: float = Field(description="the playback position the stream starts from")
    token_index: int = Field(description="tokens sampled so far in this session")
    seed: int
    params: SamplingParams
    tempo_bpm: float
    lookahead_beats: float
    realtime: bool


class StateFloatsInfo(BaseModel):
    ssm: int
    conv: int
    total: int


class ModelInfo(BaseModel):
    name: str
    architecture: str
    params: int
    vocab_size: int
    state_floats: StateFloatsInfo
    state_bytes: int
    device: str
    dtype: str = Field(description="the weights' dtype as served (SM1_WEIGHTS_DTYPE); the ssm state is float32")
    model_id: str = Field(description="digest of the weights: snapshots restore only where it matches")
    config: dict[str, Any]
    max_sessions: int


# ---- server -> client frames ------------------------------------------------------------------------------
def ready_frame(info: SessionInfo) -> dict[str, Any]:
    return {"type": "ready", **info.model_dump(mode="json")}


def events_frame(seq: int, token_index: int, events: list[NoteEvent]) -> dict[str, Any]:
    return {"type": "events", "seq": seq, "token_index": token_index, "events": [e.to_json() for e in events]}


def snapshot_frame(session: str, data_b64: str, nbytes: int, token_index: int) -> dict[str, Any]:
    return {"type": "snapshot", "session": session, "data": data_b64, "bytes": nbytes, "token_index": token_index}


def error_frame(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def end_frame(reason: str) -> dict[str, Any]:
    return {"type": "end", "reason": reason}
