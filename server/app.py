"""The FastAPI app factory: the lifespan starts the `Runtime` (checkpoint, engine, tick loop) once;
routes reach it through `request.app.state.runtime`.

    uvicorn --factory server.app:create_app     # or: sm1-server (adds the graceful SIGTERM drain)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from server import rest
from server.auth import key_ok
from server.errors import ApiError, InvalidRequest, UnknownSession
from server.peers import Peers
from server.protocol import CloseCode, ErrorCode, describe_errors, error_frame
from server.runtime import Runtime
from server.settings import Settings
from server.stream import StreamConnection
from sm1.checkpoint import LoadedCheckpoint

log = logging.getLogger("sm1.server")


async def stream_endpoint(ws: WebSocket) -> None:
    rt: Runtime = ws.app.state.runtime
    await ws.accept()
    if not key_ok(rt.settings, ws.headers, ws.query_params):
        log.warning("stream %s: refused: invalid API key", ws.client.host if ws.client else "?")
        rt.metrics.errors.labels(ErrorCode.UNAUTHORIZED).inc()
        await ws.send_json(error_frame(ErrorCode.UNAUTHORIZED, "invalid or missing API key"))
        await ws.close(CloseCode.POLICY, "invalid API key")
        return
    await StreamConnection(ws, rt).serve()


async def _api_error(request: Request, e: ApiError) -> JSONResponse:
    log.warning("%s %s: %s: %s", request.method, request.url.path, e.code, e.message)
    request.app.state.runtime.metrics.errors.labels(e.code).inc()
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    if e.status == 503:
        headers = {"Retry-After": "5"}
    return JSONResponse({"code": e.code, "message": e.message}, status_code=e.status, headers=headers)


async def _invalid_request(request: Request, e: RequestValidationError) -> JSONResponse:
    return await _api_error(request, InvalidRequest(describe_errors(e, skip=1)))


async def _internal_error(request: Request, e: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    request.app.state.runtime.metrics.errors.labels(ErrorCode.INTERNAL).inc()
    return JSONResponse({"code": ErrorCode.INTERNAL, "message": "the server failed (it logged why)"}, status_code=500)


async def _to_owner(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """A worker of several: a call for another worker's session is passed on to it (server/peers.py); every
    answer says which worker gave it."""
    rt: Runtime = request.app.state.runtime
    peers = rt.peers
    assert peers is not None
    if (owner := peers.owner_of_path(request.url.path)) is None:
        response = await call_next(request)
        response.headers["X-SM1-Worker"] = str(peers.index)
        return response
    try:
        body = await rest.read_body(request, rt.settings.max_body_bytes) if request.method == "POST" else b""
        return await peers.forward(request, owner, body)
    except ApiError as e:
        return await _api_error(request, e)
    except httpx.TransportError as e:
        log.warning("%s %s: worker %d does not answer (%s)", request.method, request.url.path, owner, e)
        gone = UnknownSession(f"the worker that held this session is not running (its sessions are lost): {e}")
        return await _api_error(request, gone)


def create_app(
    settings: Settings | None = None, checkpoint: LoadedCheckpoint | None = None, peers: Peers | None = None
) -> FastAPI:
    """`peers`: this app is one worker of several (server/workers.py)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runtime = await Runtime.start(settings, checkpoint, peers)
        try:
            yield
        finally:
            await app.state.runtime.stop()

    app = FastAPI(
        title="SM1",
        summary="Real-time MIDI generation with a d_state=1 Mamba language model",
        description="REST clips and sessions; WebSocket streaming at /v1/stream (see docs/protocol.md).",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    if peers is not None:  # inside CORS, so that a passed-on answer gets its headers too
        app.middleware("http")(_to_owner)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-SM1-Seed", "X-SM1-Tokens", "X-SM1-Token-Index", "X-SM1-Worker"],
        )
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(rest.router)
    app.include_router(rest.open_router)
    app.add_api_websocket_route("/v1/stream", stream_endpoint)
    # the browser client (server/static); mounted last, as it answers every path no route took
    app.mount("/", StaticFiles(packages=[("server", "static")], html=True), name="browser")
    return app
