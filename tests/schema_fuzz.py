"""Schemathesis over the API's OpenAPI schema (tests/test_api_schema.py checks what it found),
run beside the rest of the suite: generating requests is single-core work, minutes of it, and a
run of the suite leaves part of the two cores idle. `python -m tests.schema_fuzz OUT` serves the
API on a SQLite file and fuzzes it with each key and mode, two processes at once, writing what
every operation answered to OUT (JSON). conftest.py starts it at the lowest CPU priority once
the tests are collected, and orders test_api_schema.py last.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import FlakyFailure, FlakyStrategyDefinition, Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.errors import FailureGroup

ROOT = Path(__file__).resolve().parent.parent
WHO = ["platform", "tenant admin"]
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
FILE = "test_api_schema.py"

#: Examples per operation, key and mode: with both keys and both modes, 200 per operation. New
#: ones every run (a failure prints the request that reproduces it); GREENROOM_FUZZ=N draws N.
FUZZ = os.environ.get("GREENROOM_FUZZ")
EXAMPLES = {GenerationMode.POSITIVE: 60, GenerationMode.NEGATIVE: 40}


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


def fuzz(
    operation: schemathesis.APIOperation, mode: GenerationMode, session: requests.Session
) -> Counter[int]:
    """Send generated requests for one operation, checking each answer."""
    answers: Counter[int] = Counter()

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
        answers[case.call_and_validate(session=session).status_code] += 1

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


def fuzz_all(url: str, key: str, mode: GenerationMode) -> dict[str, Any]:
    """Every operation fuzzed: schemathesis' reports of failed checks, and the statuses
    each operation answered, by operation."""
    failures: dict[str, str] = {}
    answered: dict[str, dict[int, int]] = {}
    try:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config(key))
        with requests.Session() as session:
            for result in schema.get_all_operations():
                operation = result.ok()
                try:
                    answered[operation.label] = dict(fuzz(operation, mode, session))
                except FailureGroup as exc:  # the checks that failed, with curl to reproduce
                    failures[operation.label] = str(exc)
    except Exception:
        return {"error": traceback.format_exc()}
    return {"failures": failures, "answered": answered}


def main(out: Path) -> None:
    from greenroom.model import Role
    from tests.api_helpers import api_setup

    # The `ignored_auth` check sends requests with wrong keys, and two processes may use one
    # key at once: neither is to be throttled here (test_api_errors checks throttling).
    with (
        api_setup(
            f"sqlite:///{out.parent / 'greenroom.db'}",
            api_auth_failure_burst=10**9,
            api_rate_limit=10**6,
        ) as setup,
        ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool,
    ):
        keys = {"platform": setup.platform_key, "tenant admin": setup.keys["acme"][Role.ADMIN]}
        futures = {
            f"{who}/{mode.value}": pool.submit(fuzz_all, setup.url, keys[who], mode)
            for mode in MODES
            for who in WHO
        }
        results = {name: future.result() for name, future in futures.items()}
    out.write_text(json.dumps(results))


class Background:
    """The fuzzing, started in a process of its own at the lowest CPU priority."""

    KEY: pytest.StashKey[Background] = pytest.StashKey()

    def __init__(self, out: Path) -> None:
        self.out = out
        self._log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115 (closed in `result`)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.schema_fuzz", str(out)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.nice(19),  # idle cores only: the other tests keep their timing
            start_new_session=True,  # its pool's processes are stopped with it
        )

    def result(self, timeout: float) -> dict[str, Any]:
        """What each key and mode found (waits for the fuzzing to end)."""
        try:
            code = self._process.wait(timeout)
        finally:
            self._log.close()
        log = self.out.with_suffix(".log").read_text(errors="replace")
        assert code == 0, f"the schema fuzzing failed ({code}):\n{log[-5000:]}"
        return dict(json.loads(self.out.read_text()))

    def stop(self) -> None:
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._log.close()
        shutil.rmtree(self.out.parent, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
