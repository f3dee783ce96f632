"""What reaches storage: one set of rules for every way in (the HTTP API's schemas, the Python
API, the CLI, and the store's own encoder), so that each is stated once.

Text. Names, labels, reasons, input keys and search parameters are printable text: no control
characters (U+0000-U+001F, U+007F-U+009F) and valid Unicode (no lone surrogates). PostgreSQL
text cannot hold NUL, its JSON functions refuse a NUL or a lone surrogate (one such label made
every query that reads labels fail, for every tenant), and other control characters make names
ambiguous in logs, tables and terminals. Tenant names are narrower still: they appear in paths,
session keys and file names.

The patterns read the same in Python, in pydantic (Rust regex) and in ECMA-262, so the OpenAPI
document states them and clients can check before they send.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, StringConstraints, WithJsonSchema

from greenroom.errors import InvalidInput

_CONTROLS = r"\x00-\x1F\x7F-\x9F"
#: Printable text: no control characters.
TEXT_PATTERN = rf"^[^{_CONTROLS}]*$"
_LABEL_KEY_CHAR = r"[A-Za-z0-9_.:/-]"
_LABEL_KEY = _LABEL_KEY_CHAR + "+"
#: Tenant names: a letter or digit, then letters, digits, `_`, `.` and `-`.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
LABEL_KEY_PATTERN = rf"^{_LABEL_KEY}$"
#: A label key or nothing (a pause's label: only label pauses have one).
OPTIONAL_LABEL_KEY_PATTERN = rf"^{_LABEL_KEY_CHAR}*$"
#: A label filter in a query: `key=value`.
LABEL_FILTER_PATTERN = rf"^{_LABEL_KEY}=[^{_CONTROLS}]*$"

#: The largest count or limit (the database's integer columns hold 32 bits).
MAX_INT = 2**31 - 1
#: The largest fairness weight of a tenant.
MAX_WEIGHT = 1_000_000
#: Priorities run from -MAX_PRIORITY to MAX_PRIORITY.
MAX_PRIORITY = 1_000_000
#: The longest wait before a run starts (`delay`), and the longest duration a queue setting takes.
MAX_SECONDS = 366 * 86400.0
#: The latest `start_at` or key expiry: 2100-01-01T00:00:00Z.
MAX_UNIX_TIME = 4_102_444_800.0

MAX_NAME = 200
MAX_TEXT = 200
MAX_REASON = 2000
MAX_LABELS = 50
MAX_LABEL_KEY = 100
MAX_LABEL_VALUE = 500
MAX_PAUSE_VALUE = 500

_CONTROL = re.compile(f"[{_CONTROLS}]")
_NAME = re.compile(NAME_PATTERN)
_LABEL_KEY_RE = re.compile(LABEL_KEY_PATTERN)


def problem(value: str) -> str | None:
    """What breaks the rule in `value`, or None if it is storable text."""
    found = _CONTROL.search(value)
    if found:
        return f"must not contain control characters (U+{ord(found[0]):04X} at {found.start()})"
    try:
        value.encode()
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def check_text(value: str, field: str, *, max_length: int = MAX_TEXT, min_length: int = 0) -> str:
    """`value`, if it is storable text of an allowed length; else InvalidInput naming `field`."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string")
    if not min_length <= len(value) <= max_length:
        raise InvalidInput(f"{field} must be {min_length} to {max_length} characters")
    wrong = problem(value)
    if wrong is not None:
        raise InvalidInput(f"{field} {wrong}")
    return value


def check_name(value: str, field: str = "tenant") -> str:
    """A tenant name: 1-200 characters of NAME_PATTERN."""
    check_text(value, field, max_length=MAX_NAME, min_length=1)
    if not _NAME.match(value):
        raise InvalidInput(
            f"{field} {value!r} must start with a letter or digit and hold only letters, digits,"
            " '_', '.' and '-'"
        )
    return value


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """At most MAX_LABELS labels: keys of LABEL_KEY_PATTERN, values of storable text."""
    if len(labels) > MAX_LABELS:
        raise InvalidInput(f"labels: at most {MAX_LABELS} per run, got {len(labels)}")
    for key, value in labels.items():
        if not isinstance(key, str) or len(key) > MAX_LABEL_KEY or not _LABEL_KEY_RE.match(key):
            raise InvalidInput(
                f"label key {key!r} must be 1 to {MAX_LABEL_KEY} letters, digits or _.:/-"
            )
        check_text(value, f"label {key}", max_length=MAX_LABEL_VALUE)
    return dict(labels)


def check_keys(value: dict[str, Any], field: str) -> dict[str, Any]:
    """`value`, if it is a JSON object whose keys are storable text of 1 to MAX_TEXT
    characters (a run's input, an integration's settings)."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be a JSON object")
    for key in value:
        check_text(key, f"{field} key", min_length=1)
    return value


def error_message(error: Mapping[str, Any]) -> str:
    """A pydantic error's message, in the rules' words where it broke TEXT_PATTERN (pydantic
    would quote the regular expression)."""
    value = error.get("input")
    pattern = (error.get("ctx") or {}).get("pattern")
    broke_text = error.get("type") == "string_pattern_mismatch" and pattern == TEXT_PATTERN
    if broke_text and isinstance(value, str) and (wrong := problem(value)) is not None:
        return wrong
    return str(error["msg"])


# -- the same rules as pydantic types (request bodies and parameters of the HTTP API) --------


def text(max_length: int = MAX_TEXT, min_length: int = 0) -> Any:
    """String constraints for storable text of these lengths."""
    return StringConstraints(min_length=min_length, max_length=max_length, pattern=TEXT_PATTERN)


Text = Annotated[str, text()]
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME, pattern=NAME_PATTERN)]
Reason = Annotated[str, text(MAX_REASON, 1)]
LabelKey = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_LABEL_KEY, pattern=LABEL_KEY_PATTERN)
]
LabelValue = Annotated[str, text(MAX_LABEL_VALUE)]
ObjectKey = Annotated[str, text(MAX_TEXT, 1)]


def _object(keys: dict[str, Any], values: dict[str, Any], **more: Any) -> WithJsonSchema:
    """The JSON schema of an object with constrained keys (pydantic would put their pattern
    in patternProperties, which does not forbid other keys)."""
    return WithJsonSchema(
        {"type": "object", "propertyNames": keys, "additionalProperties": values, **more}
    )


_TEXT_SCHEMA = {"type": "string", "pattern": TEXT_PATTERN}
Labels = Annotated[
    dict[LabelKey, LabelValue],
    Field(max_length=MAX_LABELS),
    _object(
        {"pattern": LABEL_KEY_PATTERN, "minLength": 1, "maxLength": MAX_LABEL_KEY},
        {**_TEXT_SCHEMA, "maxLength": MAX_LABEL_VALUE},
        maxProperties=MAX_LABELS,
    ),
]
#: A JSON object whose keys are storable text (a run's input, an integration's settings).
JsonObject = Annotated[
    dict[ObjectKey, Any],
    _object({**_TEXT_SCHEMA, "minLength": 1, "maxLength": MAX_TEXT}, {}),
]
