"""Server settings: environment variables (prefix SM1_) or a .env file; `sm1-server` flags override them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SM1_", env_file=".env", extra="ignore")

    checkpoint: Path | None = Field(None, description="checkpoint folder; unset: the shipped default in checkpoints/")
    device: str = Field("auto", description="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_sessions: int = Field(
        256, ge=1, description="session slots in the pool (streams, REST sessions, clips); with workers, per worker"
    )
    workers: int = Field(
        1, ge=1, le=64, description="server processes sharing the port and the device (Linux): past a few "
        "hundred dense streams, one process's Python is the limit (server/workers.py)"
    )
    max_prompt_bytes: int = Field(1 << 20, ge=1, description="largest prompt MIDI file")
    max_prompt_tokens: int = Field(32_768, ge=1, description="largest prompt after tokenizing")
    max_clip_beats: float = Field(1024.0, gt=0, description="longest clip POST /v1/generate writes")
    max_clip_tokens: int = Field(16_384, ge=1, description="most tokens one clip may sample")
    idle_timeout_s: float = Field(300.0, gt=0, description="a session nobody streams is freed after this")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed to call the REST API (comma-separated); empty: none"
    )
    api_key: SecretStr | None = Field(None, description="if set, required on REST calls and the WebSocket")
    snapshot_key: SecretStr | None = Field(
        None,
        description="secret that signs session snapshots (HMAC-SHA256): set the same one on every replica that "
        "restores them; unset: signed with the public model id, which catches damage but not forgery",
    )
    max_frame_bytes: int = Field(2 << 20, ge=1024, description="largest WebSocket frame a client may send")
    max_messages_per_s: float = Field(50.0, gt=0, description="sustained client messages per connection")
    message_burst: int = Field(200, ge=1, description="client messages allowed in a burst")
    queue_frames: int = Field(64, ge=1, description="frames waiting for a slow client before its stream pauses")
    send_timeout_s: float = Field(10.0, gt=0, description="a send blocked this long drops the client")
    ws_ping_interval_s: float = Field(20.0, gt=0, description="WebSocket keepalive ping interval")
    ws_compression: bool = Field(
        False, description="permessage-deflate on WebSocket frames: fewer bytes, more server CPU per frame"
    )
    ws_ping_timeout_s: float = Field(20.0, gt=0, description="no pong this long: the client is dropped")
    default_tempo_bpm: float = Field(120.0, ge=1, le=1000)
    default_lookahead_beats: float = Field(2.0, gt=0, le=64)
    pacing_lead_s: float = Field(
        0.15, ge=0, le=5, description="start writing an onset's notes this much before the lookahead reaches it"
    )
    batch_window_s: float = Field(
        0.05, ge=0, le=1, description="a tick also serves the streams that will want a token this soon (batching)"
    )
    prefill_chunk: int = Field(128, ge=1, description="prompt tokens per forward call")
    prefill_budget: int = Field(
        0, ge=0, description="prompt tokens prefilled per tick while streams wait (all sessions together; "
        "whole chunks, so at least one); 0: 128 on the CPU, 4096 on CUDA (where a forward of 32 chunks costs "
        "about what one does)"
    )
    torch_threads: int = Field(0, ge=0, description="CPU threads for torch; 0: one per core but one")
    weights_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="the weights' dtype when serving: bfloat16 cut p99 lateness on an AMX CPU in serve_load "
        "(benchmarks/RESULTS.md; logits move by about 0.1, as on a GPU in bf16); the ssm state stays float32",
    )
    cuda_graphs: bool = Field(True, description="capture the batched step in CUDA graphs (CUDA only)")
    fused_step: bool = Field(
        True, description="the Triton decode step (CUDA only; checked against the eager step at start-up)"
    )
    shutdown_grace_s: float = Field(5.0, ge=0, description="time streams get to flush on SIGTERM")
    log_level: str = Field("info", description="debug, info, warning, error")
    inject_faults: str = Field("", description="TEST ONLY: faults to inject, e.g. step_error@20 (server/faults.py)")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, v: object) -> object:
        if isinstance(v, str):
            return [o.strip() for o in v.split(",") if o.strip()]
        return v

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def cpu_threads(self) -> int:
        """A worker's share of the cores, one of them left to its event loop (sockets, JSON, sampling glue):
        on a small machine an extra torch thread that competes with it costs more than it gives (2 cores: 2
        threads ran the batched step 2-6x slower than 1 when the machine had other work)."""
        if self.torch_threads:
            return self.torch_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // self.workers - 1)

    def prefill_tokens(self, device: torch.device) -> int:
        """prefill_budget, or its default for `device`."""
        return self.prefill_budget or (4096 if device.type == "cuda" else 128)

    @property
    def max_body_bytes(self) -> int:
        """A REST body: a base64 prompt (4/3 of the file) plus room for the other fields."""
        return self.max_prompt_bytes * 4 // 3 + (64 << 10)
