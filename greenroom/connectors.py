"""Connectors: an app's workflows for one SaaS product and the credentials they need.

A connector declares its credentials as a pydantic model; fields typed SecretStr are secrets
(write-only in the API, redacted from every artifact once a run has opened them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError

from greenroom.errors import ConfigError, InvalidInput


class NoCredentials(BaseModel):
    """For connectors whose app needs none."""


@dataclass(frozen=True, kw_only=True)
class Connector:
    name: str
    credentials: type[BaseModel] = NoCredentials
    title: str = ""
    #: Names of the workflows declared with this connector (filled in by App.workflow).
    workflows: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 200:
            raise ConfigError("connector name must be 1 to 200 characters")
        if not (isinstance(self.credentials, type) and issubclass(self.credentials, BaseModel)):
            raise ConfigError(f"connector {self.name!r}: credentials must be a pydantic model")

    def credential_schema(self) -> dict[str, Any]:
        """JSON Schema of the credentials, secret fields marked writeOnly."""
        schema = self.credentials.model_json_schema()
        for name in secret_fields(self.credentials):
            schema.get("properties", {}).get(name, {})["writeOnly"] = True
        return schema

    def parse_credentials(self, data: Any) -> BaseModel:
        """Validated credentials; errors name the field but never echo the value."""
        if not isinstance(data, dict):
            raise InvalidInput("credentials must be a JSON object")
        try:
            return self.credentials.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"credentials.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors(include_input=False)
            )
            raise InvalidInput(problems) from None


def secret_fields(model: type[BaseModel]) -> list[str]:
    return [
        name
        for name, info in model.model_fields.items()
        if info.annotation is SecretStr or info.annotation == SecretStr | None
    ]


def secret_values(credentials: BaseModel) -> list[str]:
    """The plain values of a credentials object's secrets, for redaction."""
    values = []
    for name in secret_fields(type(credentials)):
        value = getattr(credentials, name)
        if isinstance(value, SecretStr):
            values.append(value.get_secret_value())
    return values


def dump_credentials(credentials: BaseModel) -> dict[str, Any]:
    """Plain JSON of credentials, secrets revealed: only ever sealed, never returned."""
    return {
        name: value.get_secret_value() if isinstance(value, SecretStr) else value
        for name, value in credentials.model_dump().items()
    }
