"""Schemathesis over the API's own OpenAPI schema, against a real server: for every operation,
generated requests (valid and invalid ones) with a platform key and with a tenant admin key.
Every answer must be documented (status code, content type, body schema) and none may be a
server error."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.errors import FailureGroup

from greenroom.model import Role
from tests.api_helpers import ApiSetup, api_setup

#: Per operation, mode and key: the whole file stays well under a minute on SQLite. The same
#: examples every run, so CI is repeatable; GREENROOM_FUZZ=N draws N fresh ones per case instead.
FUZZ = os.environ.get("GREENROOM_FUZZ")
EXAMPLES = int(FUZZ) if FUZZ else 8

SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=FUZZ is None,
    database=None,  # no .hypothesis/ directory
    deadline=None,  # a request's time is the server's, not the generator's
    # Large generated bodies and negative cases that hypothesis filters out are expected here.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)


def config(key: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            # The key goes in as the schema's bearer scheme, not as a generated parameter: an
            # invalid request is invalid in what it asks, not in who asks (401s: test_api_errors).
            "generation": {"with-security-parameters": False},
            "auth": {"openapi": {"HTTPBearer": {"bearer": key}}},
            "checks": {
                # A schema-valid request may still be refused with 422: the API checks what the
                # schema cannot say (registered workflows and connectors, the caller's tenant,
                # a connector's credential schema, `key=value` label filters).
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]
                }
            },
        }
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiSetup]:
    db = tmp_path_factory.mktemp("schema") / "greenroom.db"
    with api_setup(f"sqlite:///{db}") as setup:
        yield setup


def fuzz(operation: schemathesis.APIOperation, mode: GenerationMode) -> set[int]:
    """Send generated requests for one operation, checking each answer; the statuses seen."""
    statuses: set[int] = set()

    @given(case=operation.as_strategy(mode))
    @SETTINGS
    def check(case: schemathesis.Case) -> None:
        statuses.add(case.call_and_validate().status_code)

    try:
        check()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE, operation.label  # nothing there can be invalid
    return statuses


@pytest.mark.parametrize("who", ["platform", "tenant admin"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_answers_conform_to_the_schema(server: ApiSetup, who: str, mode: GenerationMode) -> None:
    key = server.platform_key if who == "platform" else server.keys["acme"][Role.ADMIN]
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config(key))
    failures: dict[str, str] = {}
    answered: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        try:
            answered[operation.label] = fuzz(operation, mode)
        except FailureGroup as exc:  # schemathesis' report: the checks that failed, with curl
            failures[operation.label] = str(exc)
    assert not failures, "\n\n".join(f"{op}:\n{report}" for op, report in failures.items())
    assert len(answered) >= 35
    if mode is GenerationMode.POSITIVE:  # the key works: many operations succeed
        succeeded = [op for op, statuses in answered.items() if any(s < 300 for s in statuses)]
        assert len(succeeded) >= 12, answered
