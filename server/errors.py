"""The server's own exceptions: each carries the error code clients see and the HTTP status REST uses.

One place (app.py) turns them into REST responses; the stream handler turns them into `error` frames.
"""

from __future__ import annotations

from server.protocol import ErrorCode


class ApiError(Exception):
    code: str = ErrorCode.INTERNAL
    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelFailed(ApiError):
    """The model failed on this request's session (the server logged why); the session is gone."""


class BadPrompt(ApiError):
    code, status = ErrorCode.BAD_PROMPT, 422


class PromptTooLarge(ApiError):
    code, status = ErrorCode.PROMPT_TOO_LARGE, 413


class ClipTooLong(ApiError):
    code, status = ErrorCode.CLIP_TOO_LONG, 422


class UnknownSession(ApiError):
    code, status = ErrorCode.UNKNOWN_SESSION, 404


class SessionBusy(ApiError):
    code, status = ErrorCode.SESSION_BUSY, 409  # (WebSocket only today)


class BadSnapshot(ApiError):
    code, status = ErrorCode.BAD_SNAPSHOT, 422


class ServerFull(ApiError):
    code, status = ErrorCode.SERVER_FULL, 503


class ShuttingDown(ApiError):
    code, status = ErrorCode.SHUTTING_DOWN, 503


class Unauthorized(ApiError):
    code, status = ErrorCode.UNAUTHORIZED, 401


class BodyTooLarge(ApiError):
    code, status = ErrorCode.BODY_TOO_LARGE, 413


class LengthRequired(ApiError):
    code, status = ErrorCode.LENGTH_REQUIRED, 411


class InvalidRequest(ApiError):
    code, status = ErrorCode.INVALID_FIELD, 422
