"""Schemathesis over the API's own OpenAPI schema, against a real server: for every operation,
a few hundred generated requests (valid and invalid ones), with a platform key and with a tenant
admin key. Every answer must be documented (status code, content type, body schema) and none
may be a server error. And the schema states what the API enforces: generated valid requests
are mostly accepted (not refused with 422 for a rule the schema does not state)."""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import FlakyFailure, FlakyStrategyDefinition, Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.errors import FailureGroup

from greenroom.model import Role
from tests.api_helpers import api_setup

#: Examples per operation, key and mode: with both keys and both modes, 200 per operation. New
#: ones every run (a failure prints the request that reproduces it); GREENROOM_FUZZ=N draws N.
FUZZ = os.environ.get("GREENROOM_FUZZ")
EXAMPLES = {GenerationMode.POSITIVE: 60, GenerationMode.NEGATIVE: 40}

#: Operations whose generated requests the API may mostly refuse for a reason no schema can
#: state, with the reason. Any other operation that mostly refuses valid requests with 422
#: means the schema does not state a rule the API enforces.
REFUSED_FOR_A_REASON = {
    # A platform key must name the tenant it acts for; the schema cannot depend on the key.
    ("platform", "POST /v1/runs"): "tenant is required of platform keys",
    ("platform", "POST /v1/keys"): "tenant is required of platform keys",
    ("platform", "POST /v1/integrations"): "tenant is required of platform keys",
    ("platform", "POST /v1/subscriptions"): "tenant is required of platform keys",
    ("platform", "POST /v1/deliveries/recover"): "tenant is required of platform keys",
    ("platform", "POST /v1/schedules"): "tenant is required of platform keys",
    ("platform", "PUT /v1/license-policy"): "tenant is required of platform keys",
    ("platform", "POST /v1/report-subscriptions"): "tenant is required of platform keys",
    ("platform", "POST /v1/reports"): "tenant is required of platform keys",
    # Fields that go together (rate_limit with rate_period, heartbeat under half the lease):
    # about half the generated bodies pair them wrong.
    ("platform", "PATCH /v1/queues/{name}"): "fields that depend on each other",
    ("tenant admin", "PATCH /v1/queues/{name}"): "fields that depend on each other",
    # The endpoint must suit the channel (a URL or an address) and the address policy (https,
    # no private hosts): a generated string that fits the schema's pattern rarely does.
    ("tenant admin", "POST /v1/subscriptions"): "the channel and the address policy decide",
    ("tenant admin", "POST /v1/report-subscriptions"): "the address policy and time zones decide",
    # A time zone must be an IANA one, and `at` a real time: generated strings rarely are.
    ("tenant admin", "POST /v1/reports"): "time zones and ISO times decide",
    # A schedule's workflow must be one of the app's, its cron fields in range and its time
    # zone known: a generated string that fits the schema's patterns rarely is.
    ("tenant admin", "POST /v1/schedules"): "the app's workflows and cron semantics decide",
    # Credentials must match the schema of the connector the request names.
    ("tenant admin", "POST /v1/integrations"): "credentials depend on the connector",
    # `until` goes with a snooze only, and must be in the future: a generated one rarely is.
    ("platform", "POST /v1/findings/{finding_id}/actions"): "until: snooze only, in the future",
    ("tenant admin", "POST /v1/findings/{finding_id}/actions"): "until: snooze only, in the future",
}


def config(key: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            # The key goes in as the schema's bearer scheme, not as a generated parameter: an
            # invalid request is invalid in what it asks, not in who asks (401s: test_api_errors).
            "generation": {"with-security-parameters": False},
            "auth": {"openapi": {"HTTPBearer": {"bearer": key}}},
            "checks": {
                # A schema-valid request may still be refused with 422: the API checks what the
                # schema cannot say (the caller's tenant, integrations and runs that exist, a
                # connector's credential schema, delay and start_at together).
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]
                }
            },
        }
    )


WHO = ["platform", "tenant admin"]
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


@pytest.fixture(scope="module")
def fuzzed(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[tuple[str, str], Future[Fuzzed]]]:
    """Each key and mode fuzzed in a process of its own, two at once against one server:
    generating requests takes most of the time, on one core per process."""
    db = tmp_path_factory.mktemp("schema") / "greenroom.db"
    # The `ignored_auth` check sends requests with wrong keys, and two processes may use one
    # key at once: neither is to be throttled here (test_api_errors checks throttling).
    with (
        api_setup(f"sqlite:///{db}", api_auth_failure_burst=10**9, api_rate_limit=10**6) as setup,
        ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool,
    ):
        keys = {"platform": setup.platform_key, "tenant admin": setup.keys["acme"][Role.ADMIN]}
        # Two keys at once (each key's runs, keys and tenants are its own), positive ones first.
        yield {
            (who, mode.value): pool.submit(fuzz_all, setup.url, keys[who], mode)
            for mode in MODES
            for who in WHO
        }


@dataclass
class Answers:
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def mostly_refused(self) -> bool:
        return self.statuses[422] > sum(self.statuses.values()) / 2


def fuzz(
    operation: schemathesis.APIOperation, mode: GenerationMode, session: requests.Session
) -> Answers:
    """Send generated requests for one operation, checking each answer."""
    answers = Answers()

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=int(FUZZ) if FUZZ else EXAMPLES[mode],
        database=None,  # no .hypothesis/ directory
        deadline=None,  # a request's time is the server's, not the generator's
        # Large generated bodies and negative cases that hypothesis filters out are expected.
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )
    def check(case: schemathesis.Case) -> None:
        answers.statuses[case.call_and_validate(session=session).status_code] += 1

    try:
        check()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE, operation.label  # nothing there can be invalid
    except FlakyFailure as exc:
        # Hypothesis could not replay schemathesis' own generation (FlakyStrategyDefinition):
        # a generator's fault, not the server's. Draw again once; a second one fails the test.
        if not exc.subgroup(FlakyStrategyDefinition) or exc.subgroup(
            lambda e: not isinstance(e, FlakyStrategyDefinition | FlakyFailure)
        ):
            raise
        check()
    return answers


@dataclass
class Fuzzed:
    """What one key and mode's requests met: schemathesis' reports and the answers' statuses,
    by operation."""

    failures: dict[str, str]
    answered: dict[str, Answers]


def fuzz_all(url: str, key: str, mode: GenerationMode) -> Fuzzed:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config(key))
    fuzzed = Fuzzed(failures={}, answered={})
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            try:
                fuzzed.answered[operation.label] = fuzz(operation, mode, session)
            except FailureGroup as exc:  # schemathesis' report: the checks that failed, with curl
                fuzzed.failures[operation.label] = str(exc)
    return fuzzed


# 60 or 40 examples for each of 60-odd operations: minutes on a loaded machine, not the usual 120 s.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("mode", MODES)
def test_answers_conform_to_the_schema(
    fuzzed: dict[tuple[str, str], Future[Fuzzed]], who: str, mode: GenerationMode
) -> None:
    result = fuzzed[who, mode.value].result()
    failures, answered = result.failures, result.answered
    assert not failures, "\n\n".join(f"{op}:\n{report}" for op, report in failures.items())
    assert len(answered) >= 35
    assert not any(s >= 500 for answers in answered.values() for s in answers.statuses)
    if mode is GenerationMode.POSITIVE:
        succeeded = [op for op, a in answered.items() if any(s < 300 for s in a.statuses)]
        assert len(succeeded) >= 12, answered  # the key works: many operations succeed
        refused = {
            op: dict(a.statuses)
            for op, a in answered.items()
            if a.mostly_refused and (who, op) not in REFUSED_FOR_A_REASON
        }
        assert not refused, f"the schema does not state what the API enforces: {refused}"
