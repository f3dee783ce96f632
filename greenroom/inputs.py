"""A workflow's input, checked where it is enqueued rather than when its run starts.

A workflow takes its input one of two ways. As keyword arguments after the RunContext: the
input's keys must be parameters of the function (unless it takes **kwargs) and every parameter
without a default must be given. Or as one pydantic model, declared with
`@app.workflow(input=Model)`: the function takes (ctx, <one parameter>) and gets a validated
instance; what is stored is the model's JSON (defaults filled in, values coerced).

Enqueueing checks the input (InvalidInput naming each field: a 422 from the API, exit code 2
from the CLI); a worker checks it again at the run's start, for runs enqueued by another
version of the code, and fails the run with a PermanentError rather than retry it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from greenroom.errors import ConfigError, InvalidInput, PermanentError

Errors = list[dict[str, str]]


@dataclass(frozen=True)
class InputSpec:
    """What a workflow function takes after its RunContext."""

    workflow: str
    model: type[BaseModel] | None
    #: Parameters that take input by name; those without a default must be given.
    names: frozenset[str]
    required: tuple[str, ...]
    #: The function takes **kwargs: any key is accepted.
    open: bool

    @classmethod
    def of(cls, workflow: str, fn: Any, model: type[BaseModel] | None) -> InputSpec:
        """Read the function's signature; a signature no input could satisfy is a ConfigError."""
        params = list(inspect.signature(fn).parameters.values())
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise ConfigError(
                f"workflow {workflow!r} must take the RunContext as its first argument"
            )
        rest = params[1:]
        if model is not None:
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise ConfigError(f"workflow {workflow!r}: input must be a pydantic model")
            positional = (
                inspect.Parameter.POSITIONAL_ONLY,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
            )
            if len(rest) != 1 or rest[0].kind not in positional:
                raise ConfigError(
                    f"workflow {workflow!r} declares input={model.__name__}: it must take "
                    f"(ctx, input), one parameter for the {model.__name__}"
                )
            return cls(workflow, model, frozenset(), (), False)
        by_name = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        for p in rest:
            if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is p.empty:
                raise ConfigError(
                    f"workflow {workflow!r}: parameter {p.name!r} is positional-only, but a "
                    "run's input is passed by name"
                )
        names = frozenset(p.name for p in rest if p.kind in by_name)
        required = tuple(p.name for p in rest if p.kind in by_name and p.default is p.empty)
        open_ = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in rest)
        return cls(workflow, None, names, required, open_)

    def check(self, input: dict[str, Any]) -> dict[str, Any]:
        """The input to store: InvalidInput naming every unknown, missing or invalid field."""
        if self.model is not None:
            return self._validate(input).model_dump(mode="json", by_alias=True)
        errors: Errors = [
            _error(k, f"not an input of workflow {self.workflow!r}")
            for k in sorted(str(k) for k in input)
            if k not in self.names and not self.open
        ]
        errors += [
            _error(k, f"missing: workflow {self.workflow!r} needs it")
            for k in self.required
            if k not in input
        ]
        if errors:
            raise InvalidInput(summary(errors), errors=errors)
        return input

    def arguments(self, input: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """What the function is called with after ctx, at the run's start; a stored input that
        no longer fits (enqueued by another version) is a PermanentError: no retry fixes it."""
        try:
            if self.model is not None:
                return (self._validate(input),), {}
            return (), self.check(input)
        except InvalidInput as exc:
            raise PermanentError(
                f"run input does not fit workflow {self.workflow!r}: {exc}"
            ) from None

    def _validate(self, input: dict[str, Any]) -> BaseModel:
        assert self.model is not None
        errors: Errors = []
        if self.model.model_config.get("extra") not in ("allow", "forbid"):
            known = _field_names(self.model)
            errors = [
                _error(str(k), f"not a field of {self.model.__name__}")
                for k in sorted(str(k) for k in input)
                if k not in known
            ]
        try:
            validated = self.model.model_validate(input)
        except ValidationError as exc:
            errors += [
                _error(".".join(str(p) for p in e["loc"]) or "", e["msg"])
                for e in exc.errors(include_input=False)
            ]
        if errors:
            raise InvalidInput(summary(errors), errors=errors)
        return validated


def _field_names(model: type[BaseModel]) -> frozenset[str]:
    names = set(model.model_fields)
    for info in model.model_fields.values():
        names |= {a for a in (info.alias, info.validation_alias) if isinstance(a, str)}
    return frozenset(names)


def _error(field: str, message: str) -> dict[str, str]:
    return {"field": f"input.{field}" if field else "input", "message": message}


def summary(errors: Errors) -> str:
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors)
