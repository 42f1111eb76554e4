"""REST routes: whole clips, the model, session lifecycle, health and metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from server.auth import key_ok
from server.errors import BodyTooLarge, ClipTooLong, InvalidRequest, LengthRequired, Unauthorized
from server.prompts import decode_base64, midi_events, prompt_events, prompt_tokens
from server.protocol import (
    ForkRequest,
    GenerateRequest,
    ModelInfo,
    SessionCreate,
    SessionInfo,
    StateFloatsInfo,
    describe_errors,
)
from server.runtime import Runtime
from server.settings import Settings
from sm1.engine import ClipLength
from sm1.events import NoteEvent
from sm1.midi import write_midi

DEFAULT_CLIP_BEATS = 16.0


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(runtime)]


def require_api_key(request: Request) -> None:
    if not key_ok(request.app.state.settings, request.headers, {}):
        raise Unauthorized("invalid or missing API key (Authorization: Bearer <key>, or X-API-Key)")


router = APIRouter(dependencies=[Depends(require_api_key)])
open_router = APIRouter()  # no API key: load balancers and orchestrators probe it


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused before it is read when it is larger than `limit` (or of unknown size)."""
    length = request.headers.get("content-length")
    if length is None:
        raise LengthRequired("send the body with a Content-Length header")
    if int(length) > limit:
        raise BodyTooLarge(f"body of {length} bytes is over the limit of {limit} bytes")
    return await request.body()


def validated(model: type[BaseModel], data: bytes | str) -> Any:
    try:
        return model.model_validate_json(data or b"{}")
    except ValidationError as e:
        raise InvalidRequest(describe_errors(e)) from e


def _body_schema(model: type[BaseModel], multipart: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": model.model_json_schema()}}
    if multipart:
        content["multipart/form-data"] = {
            "schema": {
                "type": "object",
                "properties": {
                    "prompt": {"type": "string", "format": "binary", "description": "a .mid file"},
                    "request": {"type": "string", "description": "the JSON body's other fields, as JSON"},
                },
            }
        }
    return {"requestBody": {"required": False, "content": content}}


# ---- clips ----------------------------------------------------------------------------------------------
@router.post(
    "/v1/generate",
    summary="Generate a whole clip (MIDI file or JSON events)",
    openapi_extra=_body_schema(GenerateRequest, multipart=True),
    responses={200: {"content": {"audio/midi": {}, "application/json": {}}}},
)
async def generate(request: Request, rt: RuntimeDep) -> Response:
    req, events = await _generate_input(request, rt.settings)
    length = _clip_length(req, rt.settings)
    tokens = await asyncio.to_thread(prompt_tokens, events, rt.engine.tokenizer, rt.settings)
    ls = await rt.hub.generate(tokens, req.sampling(), length)
    try:
        notes = await ls.clip.done
    finally:
        await rt.hub.release(ls)
    es = ls.es
    if req.include_prompt:
        notes = (rt.engine.tokenizer.decode(tokens) if tokens else []) + notes
    else:
        notes = [dataclasses.replace(n, beat=n.beat - es.start_beat) for n in notes]
    headers = {"X-SM1-Seed": str(es.params.seed), "X-SM1-Tokens": str(es.token_index)}
    accept = request.headers.get("accept", "")
    if req.format == "json" or (req.format is None and "application/json" in accept):
        body = {
            "model": rt.checkpoint.name,
            "seed": es.params.seed,
            "tokens": es.token_index,
            "tempo_bpm": req.tempo_bpm,
            "start_beat": 0.0 if not req.include_prompt else es.start_beat,
            "events": [n.to_json() for n in notes],
        }
        return JSONResponse(body, headers=headers)
    midi = await asyncio.to_thread(write_midi, notes, req.tempo_bpm)
    headers["Content-Disposition"] = f'attachment; filename="sm1-{es.params.seed}.mid"'
    return Response(midi, media_type="audio/midi", headers=headers)


async def _generate_input(request: Request, settings: Settings) -> tuple[GenerateRequest, list[NoteEvent]]:
    """The request and its prompt's notes, from a JSON body or a multipart upload."""
    body_limit = settings.max_body_bytes
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        await read_body(request, body_limit)  # refuses an oversized upload before parsing it
        form = await request.form(max_files=1, max_fields=4, max_part_size=body_limit)
        req = validated(GenerateRequest, form.get("request") or "{}")
        upload = form.get("prompt")
        if isinstance(upload, UploadFile):
            if req.prompt is not None:
                raise InvalidRequest("give the prompt either as the uploaded file or in the request, not both")
            data = await upload.read(settings.max_prompt_bytes + 1)
            return req, await asyncio.to_thread(midi_events, data, settings, upload.filename or "upload")
    else:
        req = validated(GenerateRequest, await read_body(request, body_limit))
    return req, await asyncio.to_thread(prompt_events, req.prompt, settings)


def _clip_length(req: GenerateRequest, settings: Settings) -> ClipLength:
    if req.length_beats is not None and req.length_beats > settings.max_clip_beats:
        raise ClipTooLong(f"length_beats {req.length_beats:g} is over max_clip_beats {settings.max_clip_beats:g}")
    if req.length_tokens is not None and req.length_tokens > settings.max_clip_tokens:
        raise ClipTooLong(f"length_tokens {req.length_tokens} is over max_clip_tokens {settings.max_clip_tokens}")
    beats = req.length_beats if req.length_beats is not None or req.length_tokens is not None else DEFAULT_CLIP_BEATS
    return ClipLength(beats=beats, tokens=req.length_tokens, max_tokens=settings.max_clip_tokens)


# ---- the model -------------------------------------------------------------------------------------------
@router.get("/v1/model", response_model=ModelInfo, summary="The loaded checkpoint")
async def model_info(rt: RuntimeDep) -> ModelInfo:
    ck, engine = rt.checkpoint, rt.engine
    floats = engine.state_floats
    return ModelInfo(
        name=ck.name,
        architecture=ck.architecture,
        params=ck.model.num_params(),
        vocab_size=ck.tokenizer.vocab_size,
        state_floats=StateFloatsInfo(ssm=floats.ssm, conv=floats.conv, total=floats.total),
        state_bytes=engine.state_bytes,
        device=str(engine.device),
        dtype=str(ck.model.embedding.weight.dtype).removeprefix("torch."),
        model_id=engine.model_id,
        config=ck.config.to_dict(),
        max_sessions=engine.capacity,
    )


# ---- sessions --------------------------------------------------------------------------------------------
@router.post(
    "/v1/sessions",
    status_code=201,
    response_model=SessionInfo,
    summary="Create a session (or restore a snapshot: JSON field `snapshot`, or the raw bytes as octet-stream)",
    openapi_extra=_body_schema(SessionCreate),
)
async def create_session(request: Request, rt: RuntimeDep) -> SessionInfo:
    body = await read_body(request, rt.settings.max_body_bytes)
    if request.headers.get("content-type", "").startswith("application/octet-stream"):
        ls = await rt.hub.restore(body)
    else:
        req = validated(SessionCreate, body)
        if req.snapshot is not None:
            if req.model_fields_set - {"snapshot"}:
                raise InvalidRequest("a snapshot carries its own prompt, params and pacing: send it alone")
            ls = await rt.hub.restore(decode_base64(req.snapshot, "snapshot", rt.settings.max_body_bytes))
        else:
            ls = await rt.hub.create(req, owner="rest")
    return rt.hub.info(ls)


@router.get(
    "/v1/sessions/{session_id}/snapshot",
    summary="The session as opaque, versioned bytes (restore with POST /v1/sessions)",
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def snapshot(session_id: str, rt: RuntimeDep) -> Response:
    blob, token_index = await rt.hub.snapshot(rt.hub.get(session_id))
    return Response(blob, media_type="application/octet-stream", headers={"X-SM1-Token-Index": str(token_index)})


@router.post(
    "/v1/sessions/{session_id}/fork",
    status_code=201,
    response_model=SessionInfo,
    summary="An independent copy of a session (same future unless a new seed is given)",
)
async def fork(session_id: str, rt: RuntimeDep, body: ForkRequest | None = None) -> SessionInfo:
    parent = rt.hub.get(session_id)
    child = await rt.hub.fork(parent, body.seed if body else None)
    return rt.hub.info(child)


@router.delete("/v1/sessions/{session_id}", status_code=204, summary="End a session and free its slot")
async def delete_session(session_id: str, rt: RuntimeDep) -> Response:
    await rt.hub.delete(rt.hub.get(session_id))
    return Response(status_code=204)


# ---- operations ------------------------------------------------------------------------------------------
@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(rt: RuntimeDep) -> Response:
    return Response(rt.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@open_router.get("/healthz", summary="Liveness, load, and tick time and lateness quantiles (ms) of the last window_s")
async def healthz(
    rt: RuntimeDep,
    window_s: float = Query(60.0, gt=0, le=3600),
    scope: Literal["server", "worker"] = Query("server", description="with several workers: all, or this one"),
) -> JSONResponse:
    hub, m = rt.hub, rt.metrics
    body: dict[str, Any] = {
        "status": "ok" if hub.accepting else "draining",
        "sessions": len(hub.sessions),
        "capacity": rt.engine.capacity,
        "connections": len(hub.connections),
        "tokens_per_second": round(m.last_tokens_per_second, 1),
        "window_s": window_s,
        "tick_ms": m.recent_ticks.summary(window_s),
        "lateness_ms": m.recent_lateness.summary(window_s),
    }
    if rt.peers is not None:
        body |= {"worker": rt.peers.index, "pid": os.getpid()}
        if scope == "server":
            body = rt.peers.combine(body, await rt.peers.health(window_s))
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)
