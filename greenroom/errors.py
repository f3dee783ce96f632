"""Error hierarchy: every error greenroom raises derives from GreenroomError."""

from __future__ import annotations

from typing import Any


class GreenroomError(Exception):
    """Root of greenroom's errors."""


class ConfigError(GreenroomError):
    """Invalid settings, URLs or workflow declarations."""


class NotFound(GreenroomError):
    """An id that does not exist (or belongs to another tenant)."""


class InvalidInput(GreenroomError):
    """A caller passed a value greenroom cannot accept; `errors` names each invalid field
    ({"field": "settings.base_url", "message": ...}), never echoing its value."""

    def __init__(self, message: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = list(errors or [])


class PermanentError(GreenroomError):
    """Raised by workflow code for failures no retry can fix (bad credentials, bad input)."""


class SecretRefused(PermanentError):
    """The browser runtime refused to send a secret of the run's integration to a page (or
    URL) whose origin the integration's settings do not allow."""


class LeaseLost(GreenroomError):
    """This worker no longer holds the run: its write was refused (fencing)."""


class NonDeterminismError(PermanentError):
    """A resumed workflow called its steps in a different order than the recorded history."""


class NotSerializable(PermanentError):
    """A step result, workflow output or input that is not JSON-serializable."""


class RunCancelled(GreenroomError):
    """The run was cancelled while it was executing."""


class RunPaused(GreenroomError):
    """A pause asked this run to stop at its next step boundary."""


class LoggedOut(GreenroomError):
    """Raised by workflow code when a page shows the login form where a signed-in page was
    expected: the run logs in again (its login step, once) and retries the step."""


class Conflict(GreenroomError):
    """The request conflicts with what exists (a name taken, a key reused for another request)."""
