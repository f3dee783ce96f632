"""What the API's routes share, built once per API app (no module-level state)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from greenroom.app import App
from greenroom.browser.artifacts import ArtifactStore, default_artifact_store
from greenroom.crypto import KeyRing, load_keyring
from greenroom.storage import RunStore

if TYPE_CHECKING:
    from greenroom.api.auth import KeyCache
    from greenroom.api.throttle import FailedAuth, RateLimiter


@dataclass
class ApiState:
    app: App
    limiter: RateLimiter
    keys: KeyCache
    failures: FailedAuth
    _keyring: KeyRing | None = None
    _artifacts: ArtifactStore | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def store(self) -> RunStore:
        return self.app.store

    @property
    def keyring(self) -> KeyRing:
        with self._lock:
            if self._keyring is None:
                self._keyring = load_keyring(self.app.settings)
            return self._keyring

    @property
    def artifacts(self) -> ArtifactStore:
        with self._lock:
            if self._artifacts is None:
                self._artifacts = default_artifact_store(self.app.settings)
            return self._artifacts


async def get_state(request: Request) -> ApiState:
    """Async, as every dependency that does not block: FastAPI runs a plain function in its
    thread pool, a hand-off to another thread and back on every request."""
    state: ApiState = request.app.state.greenroom
    return state
