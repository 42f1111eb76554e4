"""The FastAPI app factory: the lifespan starts the `Runtime` (checkpoint, engine, tick loop) once;
routes reach it through `request.app.state.runtime`.

    uvicorn --factory server.app:create_app     # or: sm1-server (adds the graceful SIGTERM drain)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from server import rest
from server.auth import key_ok
from server.errors import ApiError, InvalidRequest
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


def create_app(settings: Settings | None = None, checkpoint: LoadedCheckpoint | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runtime = await Runtime.start(settings, checkpoint)
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
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-SM1-Seed", "X-SM1-Tokens", "X-SM1-Token-Index"],
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
