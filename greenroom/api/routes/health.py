"""/healthz (the process answers) and /readyz (its database answers and is migrated)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from greenroom.api.problems import Problem
from greenroom.api.state import ApiState, get_state
from greenroom.storage import SCHEMA_REVISION, schema_revision

router = APIRouter(tags=["health"])
State = Annotated[ApiState, Depends(get_state)]


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": Problem}})
def readyz(state: State) -> JSONResponse:
    try:
        revision = schema_revision(state.store.backend)
    except Exception as exc:  # the database is down or unreachable: not ready
        return _not_ready(f"database unreachable: {type(exc).__name__}")
    if revision != SCHEMA_REVISION:
        return _not_ready(f"database schema is {revision}, this node needs {SCHEMA_REVISION}")
    return JSONResponse({"status": "ready", "schema": revision})


def _not_ready(detail: str) -> JSONResponse:
    body = Problem(
        type="about:blank",
        title="Service Unavailable",
        status=503,
        detail=detail,
        instance="/readyz",
    )
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=503, media_type="application/problem+json"
    )
