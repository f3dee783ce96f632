"""Browser runtime: a Playwright pool per worker, saved sessions, failure diagnostics."""

from greenroom.browser.artifacts import ArtifactStore, LocalArtifactStore
from greenroom.browser.launch import BrowserNotFound
from greenroom.browser.pool import BrowserPool, SessionContext
from greenroom.browser.runtime import BrowserRuntime, RunBrowser

__all__ = [
    "ArtifactStore",
    "BrowserNotFound",
    "BrowserPool",
    "BrowserRuntime",
    "LocalArtifactStore",
    "RunBrowser",
    "SessionContext",
]
