"""The accounts a sync hands over (`ctx.save_accounts`, `POST /v1/integrations/{id}/accounts`),
validated as one batch: a bad row refuses the whole batch, naming the row and the field, so a
batch is applied entirely or not at all."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from greenroom.errors import InvalidInput
from greenroom.licenses.currencies import CODES
from greenroom.rules import MAX_INT, MAX_NAME, text

#: The most accounts one batch may hold (a page of a sync, or one push request).
MAX_BATCH = 10_000

Status = Literal["active", "suspended", "deactivated"]


def _instant(value: Any) -> Any:
    """ISO dates and date-times (naive ones read as UTC) or unix seconds; booleans are not
    numbers here."""
    if isinstance(value, bool):
        raise ValueError("expected a date, a date-time or unix seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value) or not 0 <= value <= 4_102_444_800:
            raise ValueError("unix seconds out of range (1970 to 2100)")
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("not an ISO 8601 date or date-time") from None
        if len(value) == 10:  # a date: its start, in UTC
            parsed = datetime.combine(date.fromisoformat(value), datetime.min.time())
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return _instant(parsed.timestamp())
    raise ValueError("expected a date, a date-time or unix seconds")


def _currency(value: Any) -> Any:
    if isinstance(value, str):
        code = value.strip().upper()
        if code not in CODES:
            raise ValueError("not an ISO 4217 currency code in use")
        return code
    return value


Instant = Annotated[float, BeforeValidator(_instant)]
UserId = Annotated[str, text(500, 1)]
Long = Annotated[str, text(500)]
Short = Annotated[str, text(MAX_NAME)]
Currency = Annotated[str, BeforeValidator(_currency)]


class AccountRow(BaseModel):
    """One account of the app, as its sync read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: UserId = Field(description="The app's own id of the user (or their login).")
    email: Long | None = None
    name: Long | None = Field(None, description="Display name.")
    role: Short | None = None
    tier: Short | None = Field(None, description="License tier or plan.")
    unit_cost: float | None = Field(None, ge=0, allow_inf_nan=False, le=1e9)
    currency: Currency | None = None
    billing_period: Literal["month", "year"] = "month"
    assigned_at: Instant | None = None
    renewal_at: Instant | None = None
    status: Status = "active"
    last_active: Instant | None = Field(None, description="The app's own last login.")
    idp_status: Status | None = None
    idp_last_active: Instant | None = Field(None, description="Last IdP sign-in to the app.")
    service_account: bool = False

    @model_validator(mode="after")
    def _priced_in_a_currency(self) -> AccountRow:
        if self.unit_cost and self.currency is None:
            raise ValueError("unit_cost needs a currency")
        return self


_BATCH = TypeAdapter(list[AccountRow])


def parse_accounts(data: Any, *, field: str = "accounts") -> list[AccountRow]:
    """A batch of account rows, or InvalidInput naming each bad row and field."""
    if not isinstance(data, list):
        raise InvalidInput(f"{field} must be a list", errors=[_error(field, "not a list")])
    if len(data) > MAX_BATCH:
        message = f"at most {MAX_BATCH} accounts per batch, got {len(data)}"
        raise InvalidInput(message, errors=[_error(field, message)])
    rows = [r.model_dump() if isinstance(r, AccountRow) else r for r in data]
    try:
        batch = _BATCH.validate_python(rows)
    except ValidationError as exc:
        errors = [
            _error(_where(field, e["loc"]), _message(e["msg"]))
            for e in exc.errors(include_input=False)
        ]
        shown = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise InvalidInput(f"invalid accounts: {shown}{more}", errors=errors[:100]) from None
    _check_unique(batch, field)
    return batch


def _where(field: str, loc: tuple[int | str, ...]) -> str:
    index, *rest = loc
    return f"{field}[{index}]" + "".join(f".{part}" for part in rest)


def _check_unique(batch: list[AccountRow], field: str) -> None:
    seen: dict[str, int] = {}
    for i, row in enumerate(batch):
        if row.user_id in seen:
            message = f"user_id repeats row {seen[row.user_id]}"
            raise InvalidInput(
                f"invalid accounts: {field}[{i}].user_id: {message}",
                errors=[_error(f"{field}[{i}].user_id", message)],
            )
        seen[row.user_id] = i


def _message(text_: str) -> str:
    """pydantic's message without the prefix it gives a validator's own words."""
    return text_.removeprefix("Value error, ")


def _error(field: str, message: str) -> dict[str, str]:
    return {"field": field, "message": message}


#: The most tiers a seat count may name.
MAX_TIERS = 1000
_SEATS = TypeAdapter(
    dict[Annotated[str, text(MAX_NAME, 1)], Annotated[int, Field(ge=0, le=MAX_INT)]]
)


def parse_seats(data: Any) -> dict[str, int]:
    """Seats bought per tier (`{"pro": 50}`), or InvalidInput naming the tier."""
    if not isinstance(data, dict) or len(data) > MAX_TIERS:
        message = f"seats must be an object of at most {MAX_TIERS} tiers and counts"
        raise InvalidInput(message, errors=[_error("seats", message)])
    try:
        return _SEATS.validate_python(data)
    except ValidationError as exc:
        errors = [
            _error("seats" + "".join(f".{p}" for p in e["loc"]), e["msg"])
            for e in exc.errors(include_input=False)
        ]
        raise InvalidInput("invalid seats: " + errors[0]["message"], errors=errors) from None
