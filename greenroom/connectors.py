"""Connectors: an app's workflows for one SaaS product, the credentials they need and the
settings an integration gives them.

A connector declares its credentials as a pydantic model; fields typed SecretStr are secrets
(write-only in the API, redacted from every artifact once a run has opened them). Its settings
model holds what an integration's admin decides and a run must not: above all where the secrets
may be sent, as fields typed SecretOrigin (greenroom.origins).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError

from greenroom.errors import ConfigError, InvalidInput


class NoCredentials(BaseModel):
    """For connectors whose app needs none."""


class NoSettings(BaseModel):
    """For connectors that take no settings (their secrets may go nowhere in a browser)."""


@dataclass(frozen=True, kw_only=True)
class Connector:
    name: str
    credentials: type[BaseModel] = NoCredentials
    settings: type[BaseModel] = NoSettings
    title: str = ""
    #: The workflow that deactivates one account of the app (a license finding's reclaim):
    #: it is given the account's `user_id` and `email`, and the input of the sync run that read
    #: the account, each where its signature takes them.
    deactivate: str | None = None
    #: Names of the workflows declared with this connector (filled in by App.workflow).
    workflows: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 200:
            raise ConfigError("connector name must be 1 to 200 characters")
        for what in ("credentials", "settings"):
            model = getattr(self, what)
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise ConfigError(f"connector {self.name!r}: {what} must be a pydantic model")
        if secret_fields(self.settings):
            raise ConfigError(
                f"connector {self.name!r}: settings are shown to every viewer; secrets "
                f"({', '.join(secret_fields(self.settings))}) belong in its credentials"
            )

    def credential_schema(self) -> dict[str, Any]:
        """JSON Schema of the credentials, secret fields marked writeOnly."""
        schema = self.credentials.model_json_schema()
        for name in secret_fields(self.credentials):
            schema.get("properties", {}).get(name, {})["writeOnly"] = True
        return schema

    def parse_credentials(self, data: Any) -> BaseModel:
        """Validated credentials; errors name the field but never echo the value."""
        return _parse(self.credentials, data, "credentials")

    def settings_schema(self) -> dict[str, Any]:
        """JSON Schema of the settings; secret origins are marked (origins.SCHEMA_MARK)."""
        return self.settings.model_json_schema()

    def parse_settings(self, data: Any) -> BaseModel:
        """Validated settings. A field the model does not have is an error, not dropped: an
        admin's typo must not leave a setting at its default unnoticed."""
        if isinstance(data, dict):
            unknown = sorted(str(k) for k in data if k not in self.settings_fields())
            if unknown:
                errors = [
                    {"field": f"settings.{k}", "message": f"not a setting of {self.name}"}
                    for k in unknown
                ]
                raise InvalidInput(_summary(errors), errors=errors)
        return _parse(self.settings, data, "settings")

    def dump_settings(self, settings: BaseModel) -> dict[str, Any]:
        """Settings as stored and shown: every field, defaults included."""
        return settings.model_dump(mode="json", by_alias=True)

    def settings_fields(self) -> frozenset[str]:
        """Names (and aliases) of the settings: never a run's input."""
        names = set(self.settings.model_fields)
        for info in self.settings.model_fields.values():
            names |= {a for a in (info.alias, info.validation_alias) if isinstance(a, str)}
        return frozenset(names)

    def check_input(self, input: dict[str, Any]) -> None:
        """Refuse a run input that names a setting: what the integration's admin decides
        (where its secrets may go, above all) is never up to whoever starts a run."""
        refuse_settings_in_input(input, self.settings_fields(), f"connector {self.name!r}")


def refuse_settings_in_input(input: dict[str, Any], settings: Collection[str], owner: str) -> None:
    """InvalidInput naming each input field that is one of `settings`."""
    named = sorted(str(k) for k in input if k in settings)
    if named:
        errors = [
            {
                "field": f"input.{k}",
                "message": f"is a setting of {owner}: its integration's admins set it, "
                "a run's input cannot",
            }
            for k in named
        ]
        raise InvalidInput(_summary(errors), errors=errors)


def _parse(model: type[BaseModel], data: Any, what: str) -> BaseModel:
    if not isinstance(data, dict):
        raise InvalidInput(f"{what} must be a JSON object", errors=[_error(what, "not an object")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            _error(".".join([what, *(str(p) for p in e["loc"])]), e["msg"])
            for e in exc.errors(include_input=False)
        ]
        raise InvalidInput(_summary(errors), errors=errors) from None


def _error(field: str, message: str) -> dict[str, str]:
    return {"field": field, "message": message}


def _summary(errors: list[dict[str, str]]) -> str:
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors)


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
