"""The OpenAPI document: what FastAPI generates, made to say what the API enforces, so that
clients (and schemathesis) can check a request before they send it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI

from greenroom.api.problems import MEDIA_TYPE
from greenroom.app import App


def install(api: FastAPI, app: App) -> None:
    """Refine the document once, when it is first asked for."""
    generate = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            api.openapi_schema = refine(generate(), app)
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


def refine(doc: dict[str, Any], app: App) -> dict[str, Any]:
    _problem_media_type(doc)
    for schema in _schemas(doc):
        _integer_bounds(schema)
    bodies = doc["components"]["schemas"]
    _enum(bodies["RunCreate"]["properties"]["workflow"], sorted(app.workflows))
    _enum(bodies["IntegrationCreate"]["properties"]["connector"], sorted(app.connectors))
    # A label pause names its label's key.
    bodies["PauseCreate"]["if"] = {"properties": {"scope": {"const": "label"}}}
    bodies["PauseCreate"]["then"] = {
        "required": ["label"],
        "properties": {"label": {"minLength": 1}},
    }
    return doc


def _problem_media_type(doc: dict[str, Any]) -> None:
    """Error responses are sent as problem+json (FastAPI would say application/json)."""
    for path in doc["paths"].values():
        for operation in path.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[0] in "45" and "application/json" in content:
                    content[MEDIA_TYPE] = content.pop("application/json")


def _integer_bounds(schema: dict[str, Any]) -> None:
    """FastAPI writes the bounds of integers as floats (1.0), which lets generators send 1.0
    where the API wants 1."""
    if schema.get("type") == "integer":
        for bound in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if isinstance(schema.get(bound), float) and schema[bound].is_integer():
                schema[bound] = int(schema[bound])


def _enum(schema: dict[str, Any], names: list[str]) -> None:
    """The names the app declares (its examples among them)."""
    if names:
        schema["enum"] = names
        schema["examples"] = names[:1]


def _schemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in the document (each schema among them)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schemas(value)
