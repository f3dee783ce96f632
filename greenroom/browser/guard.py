"""The secret guard: a run's integration secrets reach only pages and URLs of the origins the
integration's settings allow (its SecretOrigin fields).

Whatever a workflow does with Playwright (fill, type, press_sequentially, keyboard.type,
set_input_files, goto, evaluate, request.fetch, route.fulfill...) leaves this process as one
protocol message to Playwright's driver, so that is where the guard looks: at every message,
before it is sent. One that carries a guarded secret (as is, in the JSON, HTML and URL forms
the run's redactor knows, or base64-encoded in a binary field) is sent only if everything it
delivers to is of an allowed origin:

- a frame, element or handle: the document it is in (about:blank and srcdoc frames are their
  parent's), and every frame below it when a selector enters frames;
- `goto`, and any call with a `url`: that URL's origin;
- keyboard input to a page: every frame of the page (the focused one could be any of them);
- `request.fetch`: the URL's origin; a routed request: its URL's origin (and, when a handler
  answers a request that is not a navigation, the requesting document's);
- anything else (headers or init scripts for every page, cookies, other contexts, workers):
  nowhere, so it is refused.

A refused message is not sent: the call raises SecretRefused (a PermanentError) and the run's
log says where the secret would have gone. This relies on Playwright's client internals (its
connection's send method), checked when the guard is installed and covered by the tests.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from greenroom.browser.page_capture import Redactor
from greenroom.errors import ConfigError, SecretRefused
from greenroom.origins import OPAQUE, origin_of

#: Protocol fields whose value is base64 of binary data (file payloads, request bodies).
_BINARY_FIELDS = frozenset({"buffer", "postData", "b", "body", "message", "binary"})
_ENTERS_FRAME = "internal:control=enter-frame"
_SEND_METHODS = ("send_message_to_server", "_send_message_to_server")

_trusted: contextvars.ContextVar[bool] = contextvars.ContextVar("greenroom_trusted", default=False)
#: The guard of the run whose task (or a task it started) is sending.
_acting: contextvars.ContextVar[SecretGuard | None] = contextvars.ContextVar(
    "greenroom_acting_guard", default=None
)


@contextlib.contextmanager
def trusted() -> Iterator[None]:
    """greenroom's own calls that may carry what a site stored (restoring a saved session into a
    new context): the state goes back to the origins it came from, so it is not checked."""
    token = _trusted.set(True)
    try:
        yield
    finally:
        _trusted.reset(token)


@dataclass(eq=False, kw_only=True)
class SecretGuard:
    """One run's: its secrets (the run's redactor), the origins they may go to, and the browser
    context (Playwright's own object) the run uses."""

    integration: str
    redactor: Redactor
    origins: frozenset[str]
    log: Any
    context: Any = None
    #: What was refused, as (method, origin): for the run's log and for tests.
    refused: list[tuple[str, str]] = field(default_factory=list)

    def act(self) -> None:
        """Mark the calling task (and the tasks it starts) as this run's: whatever it sends,
        to any context, is checked against this guard."""
        _acting.set(self)


class Shield:
    """Installed once on a Playwright connection: checks each message it sends against the
    guards of the runs using it."""

    def __init__(self) -> None:
        self._guards: set[SecretGuard] = set()
        self._installed: Any = None

    def install(self, playwright: Any) -> None:
        connection = getattr(getattr(playwright, "_impl_obj", None), "_connection", None)
        for name in _SEND_METHODS:
            send = getattr(connection, name, None)
            if callable(send):
                break
        else:
            raise ConfigError(
                "this Playwright version has no connection method greenroom's secret guard "
                f"knows ({' or '.join(_SEND_METHODS)}); use the version in greenroom's uv.lock"
            )
        if connection is self._installed:
            return

        def guarded(owner: Any, method: str, params: Any, *args: Any, **kwargs: Any) -> Any:
            self.check(owner, method, params)
            return send(owner, method, params, *args, **kwargs)

        setattr(connection, name, guarded)
        self._installed = connection

    def attach(self, guard: SecretGuard, context: Any) -> None:
        """The run's guard covers `context` (a Playwright BrowserContext) from now on."""
        guard.context = getattr(context, "_impl_obj", context)
        self._guards.add(guard)

    def detach(self, guard: SecretGuard) -> None:
        self._guards.discard(guard)
        guard.context = None

    def check(self, owner: Any, method: str, params: Any) -> None:
        """Raise SecretRefused for a message carrying a guarded secret somewhere its guard does
        not allow. The guards that apply are those of the runs using the message's context
        (an event handler's calls included) and the sending run's own: never another run's,
        so a run cannot learn whether a string is someone else's secret."""
        if _trusted.get():
            return
        context = _context_of(owner)
        guards = [g for g in self._guards if context is not None and g.context is context]
        acting = _acting.get()
        if acting is not None and acting not in guards:
            guards.append(acting)
        texts: list[str] | None = None
        for guard in guards:
            if guard.redactor.empty:
                continue
            if texts is None:
                texts = list(_texts(params))
            if any(guard.redactor.found_in(t) for t in texts):
                self._judge(guard, context, owner, method, params)

    def _judge(
        self, guard: SecretGuard, context: Any, owner: Any, method: str, params: Any
    ) -> None:
        if context is None or context is not guard.context:
            refuse(guard, method, "another browser context", "it is not this run's")
        where = _destinations(owner, method, params)
        if not where:
            refuse(guard, method, "every page", "it is not sent to one page or URL")
        for origin in where:
            if origin not in guard.origins:
                refuse(guard, method, origin, "")


def refuse(guard: SecretGuard, method: str, origin: str, why: str) -> None:
    guard.refused.append((method, origin))
    allowed = ", ".join(sorted(guard.origins)) or "none (its connector declares no SecretOrigin)"
    guard.log.warning("secret refused", integration=guard.integration, method=method, origin=origin)
    reason = f" ({why})" if why else ""
    raise SecretRefused(
        f"refused to send a secret of integration {guard.integration} to {origin}{reason} "
        f"with Playwright's {method}: the integration's settings allow only {allowed}"
    )


def _texts(value: Any, key: str = "") -> Iterator[str]:
    """Every string in a message's parameters, and the text of its base64 fields."""
    if isinstance(value, str):
        yield value
        if key in _BINARY_FIELDS:
            yield _decoded(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _texts(v, str(k))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _texts(item, key)


def _decoded(value: str) -> str:
    """The text of a base64 field ("" when it is not base64)."""
    try:
        return base64.b64decode(value, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return ""


def _context_of(owner: Any) -> Any:
    while owner is not None and getattr(owner, "_type", None) != "BrowserContext":
        owner = getattr(owner, "_parent", None)
    return owner


def _destinations(owner: Any, method: str, params: Any) -> set[str]:
    """The origins a message delivers to; empty when it reaches no one page or URL."""
    kind = getattr(owner, "_type", "")
    given = params if isinstance(params, dict) else {}
    url = given.get("url")
    if kind == "Frame" and method == "goto":
        return {origin_of(str(url))}
    if kind in ("Frame", "ElementHandle", "JSHandle"):
        frame = owner if kind == "Frame" else _frame_of(owner)
        if frame is None:
            return set()
        frames = _tree(frame) if _ENTERS_FRAME in str(given.get("selector", "")) else [frame]
        found = {_frame_origin(f) for f in frames}
        return found | ({origin_of(url)} if isinstance(url, str) else set())
    if kind == "Page" and method.startswith("keyboard"):
        return {_frame_origin(f) for f in owner.frames}
    if kind == "APIRequestContext" and method == "fetch":
        return {origin_of(str(url))}
    if kind == "Route" and method in ("fulfill", "continue"):
        request = owner.request
        found = {origin_of(url if isinstance(url, str) else request.url)}
        if method == "fulfill" and not request.is_navigation_request():
            # The requesting document reads the answer (a navigation's answer replaces it).
            try:
                found.add(_frame_origin(request.frame))
            except Exception:  # a service worker's request has no frame
                found.add(OPAQUE)
        return found
    return set()


def _frame_of(handle: Any) -> Any:
    while handle is not None and getattr(handle, "_type", None) != "Frame":
        handle = getattr(handle, "_parent", None)
    return handle


def _tree(frame: Any) -> Iterable[Any]:
    yield frame
    for child in frame.child_frames:
        yield from _tree(child)


def _frame_origin(frame: Any) -> str:
    """A frame's document's origin; about:blank and srcdoc frames have their parent's."""
    while frame.url in ("", "about:blank", "about:srcdoc") and frame.parent_frame is not None:
        frame = frame.parent_frame
    return origin_of(frame.url)
