"""Errors as problem+json (RFC 9457): every failure the API returns has this one shape."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from greenroom.errors import (
    ConfigError,
    Conflict,
    GreenroomError,
    InvalidInput,
    NotFound,
    NotSerializable,
)
from greenroom.rules import error_message

MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("greenroom.api")


class Problem(BaseModel):
    """What went wrong, for people (title, detail) and programs (status, type, errors)."""

    type: str = Field(default="about:blank", examples=["about:blank"])
    title: str = Field(examples=["Not Found"])
    status: int = Field(examples=[404])
    detail: str | None = Field(None, examples=["run 0b1c… not found"])
    instance: str | None = Field(None, examples=["/v1/runs/0b1c…"])
    #: For 422: one entry per invalid field, its location and what is wrong.
    errors: list[dict[str, Any]] | None = None


Responses = dict[int | str, dict[str, Any]]


def responses(*codes: int, **described: str) -> Responses:
    """OpenAPI entries for problem responses: plain codes, or `c404="why"` with a description."""
    out: Responses = {code: {"model": Problem} for code in codes}
    for name, description in described.items():
        out[int(name.removeprefix("c"))] = {"model": Problem, "description": description}
    return out


#: What any authenticated route can answer.
COMMON = responses(
    401,
    403,
    413,
    422,
    429,
    c400="the request body could not be read (JSON must be UTF-8)",
    c503="the database is unavailable for now: retry after Retry-After seconds",
)


class ApiError(Exception):
    """Raised by routes for an HTTP error that is not one of greenroom's own."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def problem(
    request: Request,
    status: int,
    detail: str | None,
    *,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body = Problem(
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=MEDIA_TYPE,
        headers=headers,
    )


_STATUS = {
    NotFound: 404,
    Conflict: 409,
    InvalidInput: 422,
    NotSerializable: 422,
}


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Where each invalid value was and why; the value itself is not echoed (it may be a
    credential)."""
    return [
        {
            "field": ".".join(str(p) for p in err["loc"]),
            "message": error_message(err),
            "type": err["type"],
        }
        for err in exc.errors()
    ]


def install(app: FastAPI) -> None:
    """Turn every error into a problem: greenroom's, HTTP, validation, and unexpected ones."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return problem(request, exc.status, exc.detail, headers=exc.headers)

    @app.exception_handler(GreenroomError)
    async def greenroom_error(request: Request, exc: GreenroomError) -> JSONResponse:
        for kind, status in _STATUS.items():
            if isinstance(exc, kind):
                errors = exc.errors if isinstance(exc, InvalidInput) and exc.errors else None
                return problem(request, status, str(exc), errors=errors)
        if isinstance(exc, ConfigError):
            log.error("configuration error serving %s: %s", request.url.path, exc)
            return problem(request, 503, "the server is misconfigured; see its log")
        return problem(request, 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        fields = ", ".join(e["field"] for e in errors)
        return problem(request, 422, f"invalid request: {fields}", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else None
        headers = dict(exc.headers) if exc.headers else None
        return problem(request, exc.status_code, detail, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return problem(request, 500, "internal error; it has been logged")
