"""Argument parsing shared by the commands; every bad value is an InvalidInput naming its option."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from greenroom.errors import InvalidInput
from greenroom.model import RunState

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_RATE = re.compile(r"(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|m|h|d|w)")
DURATION_HINT = "a duration like 30d, 12h, 15m or 90s"


def split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InvalidInput("expected a comma-separated list, got nothing")
    return items


def parse_states(value: str | None) -> list[RunState]:
    states = []
    for name in split_list(value) or []:
        try:
            states.append(RunState(name.lower()))
        except ValueError:
            known = ", ".join(s.value for s in RunState)
            raise InvalidInput(f"unknown state {name!r} (one of {known})") from None
    return states


def parse_input(text: str, option: str = "--input") -> dict[str, Any]:
    """A JSON object given on the command line (a run's input, an integration's settings)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f'{option} must be a JSON object, e.g. \'{{"org": "acme"}}\'')
    return value


def parse_label(pair: str) -> tuple[str, str]:
    key, sep, value = pair.partition("=")
    if not sep or not key.strip():
        raise InvalidInput(f"--label must look like key=value, got {pair!r}")
    return key.strip(), value


def parse_labels(pairs: Sequence[str]) -> dict[str, str]:
    return dict(parse_label(pair) for pair in pairs)


def parse_duration(text: str, option: str) -> float:
    """Seconds in "30d", "12h", "15m", "90s" (or "500ms", "2w")."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match:
        raise InvalidInput(f"{option} must be {DURATION_HINT}, got {text!r}")
    return float(match[1]) * UNITS[match[2]]


def parse_time(text: str, option: str, now: float) -> float:
    """A point in time: a duration ago ("12h") or an ISO time (local time unless it says)."""
    try:
        return now - parse_duration(text, option)
    except InvalidInput:
        pass
    try:
        return parse_iso(text, option)
    except InvalidInput:
        raise InvalidInput(
            f"{option} must be {DURATION_HINT} (that long ago) or an ISO time like "
            f"2024-05-01T02:00, got {text!r}"
        ) from None


def parse_iso(text: str, option: str) -> float:
    """An ISO time (local time unless it says) as Unix time."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise InvalidInput(
            f"{option} must be an ISO time like 2024-05-01T02:00 (or with +01:00), got {text!r}"
        ) from None


def parse_rate_limit(text: str) -> tuple[int, float] | None:
    """ "10/60s", "100/1m" or "5/s" as (starts, period seconds); "none" clears the limit."""
    if text.strip().lower() == "none":
        return None
    match = _RATE.fullmatch(text.strip().lower())
    if not match:
        raise InvalidInput(
            f"--rate-limit must look like N/PERIOD (10/60s, 100/1m, 5/s) or none, got {text!r}"
        )
    period = float(match[2] or 1) * UNITS[match[3]]
    if int(match[1]) < 1 or period <= 0:
        raise InvalidInput(f"--rate-limit needs at least 1 start per positive period: {text!r}")
    return int(match[1]), period


def parse_setting(text: str, option: str) -> int | float | None:
    """A number, or "none" to clear the setting."""
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidInput(f"{option} must be a number or none, got {text!r}")
    return value
