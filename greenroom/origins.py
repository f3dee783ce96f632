"""Origins: where a connector's secrets may be sent.

A connector's settings model types the URLs its secrets may go to as `SecretOrigin`. An
integration's admin sets them; its runs may send the integration's secrets only to pages and
URLs of those origins (scheme, host and port), which the browser runtime enforces
(greenroom.browser.guard).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

#: The JSON Schema keyword that marks a settings field as a secret origin.
SCHEMA_MARK = "x-secret-origin"
#: The origin of a page whose origin is opaque (about:blank opened on its own, data: URLs).
OPAQUE = "null"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def origin_of(url: str) -> str:
    """The origin of an absolute URL, as browsers compare them: `scheme://host[:port]`,
    lowercased, default ports dropped; OPAQUE for anything without a network host."""
    if url.startswith("blob:"):
        url = url[len("blob:") :]
    if not _plain(url):
        return OPAQUE  # where browsers and urllib could read another host: no origin at all
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return OPAQUE
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        return OPAQUE
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _plain(url: str) -> bool:
    """No character that browsers read differently from urllib (they drop tabs and newlines
    and take a backslash for a slash: `http://evil\\@good/` is evil's)."""
    return not any(c <= " " or c in "\\\x7f" for c in url)


class SecretOrigin(str):
    """A settings field of this type is an http(s) URL whose origin the integration's secrets
    may be sent to (its path is the connector's business). Without credentials in it."""

    @property
    def origin(self) -> str:
        return origin_of(self)

    @classmethod
    def _validate(cls, value: str) -> SecretOrigin:
        if not _plain(value):
            raise PydanticCustomError(
                "secret_origin", "must not contain spaces, control characters or backslashes"
            )
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise PydanticCustomError("secret_origin", "must be an http(s) URL") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise PydanticCustomError(
                "secret_origin", "must be an absolute http:// or https:// URL with a host"
            )
        if parts.username is not None or parts.password is not None:
            raise PydanticCustomError("secret_origin", "must not contain a user name or password")
        return cls(value)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls._validate,
            core_schema.str_schema(min_length=1, max_length=2000),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.update(format="uri", **{SCHEMA_MARK: True})
        return json_schema


def secret_origins(settings: BaseModel) -> frozenset[str]:
    """The origins of every SecretOrigin in validated settings (nested ones included)."""
    return frozenset(value.origin for value in _walk(settings))


def _walk(value: Any) -> Iterator[SecretOrigin]:
    if isinstance(value, SecretOrigin):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _walk(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _walk(item)
