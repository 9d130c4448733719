"""JSON errors: every failure leaves the server as `{"error": {"type", "message"}}` with the right status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from appliance.errors import EngineUnavailableError, ModelLoadError, QueueFullError, RequestError

log = logging.getLogger("appliance.server")


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorBody(BaseModel):
    """Every error response: `{"error": {"type", "message"}}`."""

    error: ErrorDetail


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}
ERROR_RESPONSES: dict[int | str, dict] = {
    400: {"model": ErrorBody, "description": "Bad input"},
    401: {"model": ErrorBody, "description": "Missing, unknown or revoked API key"},
    403: {"model": ErrorBody, "description": "The key may not do this (admin only, or not its collection)"},
    404: {"model": ErrorBody, "description": "No such collection, document, job or key"},
    409: {"model": ErrorBody, "description": "Exists already"},
    413: {"model": ErrorBody, "description": "Body, upload, file or archive over its limit"},
    415: {"model": ErrorBody, "description": "Unsupported file type"},
    422: {"model": ErrorBody, "description": "Invalid request body or parameters"},
    429: {"model": ErrorBody, "description": "This key is over its rate limit", "headers": _RETRY_AFTER},
    503: {"model": ErrorBody, "description": "Engine queue full, or still loading", "headers": _RETRY_AFTER},
}  # documented on every route (`FastAPI(responses=...)`), so clients and the schema fuzz test know them


class ApiError(Exception):
    """Raise from a route to answer with a JSON error."""

    def __init__(self, status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.headers = headers


def error_response(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message}}, status_code=status, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method that some route of the app serves at the request's path (each method is tried)."""
    return [method for method in ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
                   for route in request.app.router.routes)]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.type, exc.message, exc.headers)

    @app.exception_handler(RequestError)
    async def _bad_request(_: Request, exc: RequestError) -> JSONResponse:
        return error_response(400, "invalid_request", str(exc))

    @app.exception_handler(EngineUnavailableError)
    async def _engine_down(_: Request, exc: EngineUnavailableError) -> JSONResponse:
        return error_response(503, "engine_unavailable", str(exc))

    @app.exception_handler(QueueFullError)
    async def _busy(_: Request, exc: QueueFullError) -> JSONResponse:
        return error_response(503, "overloaded", str(exc), {"Retry-After": "1"})

    @app.exception_handler(ModelLoadError)
    async def _model(_: Request, exc: ModelLoadError) -> JSONResponse:
        return error_response(503, "model_unavailable", str(exc), {"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            if err.get("type") == "json_invalid":  # loc is ("body", character offset)
                parts.append(f"the body is not valid JSON (at character {err['loc'][-1]}): "
                             f"{err.get('ctx', {}).get('error', 'decode error')}")
                continue
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names the methods of one route; a path may have several
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return error_response(exc.status_code, kind, str(exc.detail), headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, exc: ClientDisconnect) -> JSONResponse:  # also a body cut off at its size limit
        return error_response(400, "invalid_request", "the client disconnected before sending the whole body")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error (see the server log)")
