"""Schemathesis over the API's own OpenAPI schema, against a real server: for every operation,
a few hundred generated requests (valid and invalid ones), with a platform key and with a tenant
admin key. Every answer must be documented (status code, content type, body schema) and none
may be a server error. And the schema states what the API enforces: generated valid requests
are mostly accepted (not refused with 422 for a rule the schema does not state).

The requests are sent beside the rest of the suite (tests/schema_fuzz.py); these tests check
what they met, and run last."""

from __future__ import annotations

from typing import Any

import pytest
from schema_fuzz import MODES, WHO, Background
from schemathesis import GenerationMode

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


@pytest.fixture(scope="module")
def fuzzed(request: pytest.FixtureRequest) -> dict[str, Any]:
    return request.config.stash[Background.KEY].result(timeout=900)


def _mostly_refused(statuses: dict[str, int]) -> bool:
    return statuses.get("422", 0) > sum(statuses.values()) / 2


@pytest.mark.timeout(900)
@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("mode", MODES)
def test_answers_conform_to_the_schema(
    fuzzed: dict[str, Any], who: str, mode: GenerationMode
) -> None:
    result = fuzzed[f"{who}/{mode.value}"]
    assert "error" not in result, result.get("error")
    failures: dict[str, str] = result["failures"]
    answered: dict[str, dict[str, int]] = result["answered"]  # JSON: statuses as text
    assert not failures, "\n\n".join(f"{op}:\n{report}" for op, report in failures.items())
    assert len(answered) >= 35
    assert not any(int(s) >= 500 for statuses in answered.values() for s in statuses)
    if mode is GenerationMode.POSITIVE:
        succeeded = [op for op, st in answered.items() if any(int(s) < 300 for s in st)]
        assert len(succeeded) >= 12, answered  # the key works: many operations succeed
        refused = {
            op: st
            for op, st in answered.items()
            if _mostly_refused(st) and (who, op) not in REFUSED_FOR_A_REASON
        }
        assert not refused, f"the schema does not state what the API enforces: {refused}"
