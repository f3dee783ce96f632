"""What a request may hold: a body up to a cap (a larger one is refused with 413 before it is
read into memory), and a path and query without NUL characters (PostgreSQL text cannot hold
them; request bodies are checked by schemas.Body)."""

from __future__ import annotations

import json
from http import HTTPStatus

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from greenroom.api.problems import MEDIA_TYPE


class BodyLimit:
    """Checks Content-Length up front, and counts the bytes of bodies sent without it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # An HTTPException reaches the app's error handlers (FastAPI turns any other
                    # exception raised while it reads the body into a 400).
                    raise HTTPException(413, self.detail)
            return message

        await self.app(scope, counted, send)

    @property
    def detail(self) -> str:
        return f"request bodies are limited to {self.max_bytes} bytes"

    async def _refuse(self, scope: Scope, send: Send) -> None:
        body = json.dumps(
            {
                "type": "about:blank",
                "title": HTTPStatus(413).phrase,
                "status": 413,
                "detail": self.detail,
                "instance": scope.get("path", ""),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def no_nul(request: Request) -> None:
    """A dependency of every route: 422 for a NUL character in a path or query parameter.
    Async, so that it runs on the event loop rather than in the thread pool."""
    given = [("path", *item) for item in request.path_params.items()]
    given += [("query", *item) for item in request.query_params.multi_items()]
    bad = [
        {"loc": (where, name), "msg": "must not contain NUL characters", "type": "value_error"}
        for where, name, value in given
        if "\x00" in str(value)
    ]
    if bad:
        raise RequestValidationError(bad)
