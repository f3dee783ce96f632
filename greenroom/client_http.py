"""The HTTP plumbing the client's methods share: parsing answers into the API's models, and
query parameters, path segments and pages as the API takes them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter

from greenroom.api.schemas import Page

T = TypeVar("T")

_ADAPTERS: dict[object, TypeAdapter[Any]] = {}


def _parse(tp: type[T], response: httpx.Response) -> T:
    adapter = _ADAPTERS.get(tp) or _ADAPTERS.setdefault(tp, TypeAdapter(tp))
    parsed: T = adapter.validate_json(response.content)
    return parsed


def _body(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_unset=True)


def _params(**given: Any) -> dict[str, Any]:
    """Query parameters: None is left out, times go as ISO 8601."""
    return {
        k: v.isoformat() if isinstance(v, datetime) else v
        for k, v in given.items()
        if v is not None
    }


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _pages(fetch: Callable[[str | None], Page[T]]) -> Iterator[T]:
    cursor = None
    while True:
        page = fetch(cursor)
        yield from page.items
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
