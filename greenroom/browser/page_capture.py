"""What a failed run's page leaves behind (its failure diagnostics): a screenshot, the HTML with
passwords redacted, console messages and page errors, and the URL. Every capture is bounded in
time (a hung page must not hang the worker) and in size; known secrets are replaced before
anything is stored."""

from __future__ import annotations

import asyncio
import html
import io
import json
import time
import zipfile
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, quote_plus

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, ConsoleMessage, Page, WebError

T = TypeVar("T")
REDACTED = "[redacted]"

# The live DOM with current input values written out, password values replaced.
_REDACTED_HTML = """() => {
  const live = document.querySelectorAll('input, textarea');
  const root = document.documentElement.cloneNode(true);
  const copies = root.querySelectorAll('input, textarea');
  copies.forEach((el, i) => {
    const type = (el.getAttribute('type') || '').toLowerCase();
    if (type === 'password') { el.setAttribute('value', '[redacted]'); return; }
    const value = live[i] ? live[i].value : '';
    if (el.tagName === 'TEXTAREA') el.textContent = value;
    else if (value) el.setAttribute('value', value);
  });
  return '<!DOCTYPE html>\\n' + root.outerHTML;
}"""


class Redactor:
    """Replaces registered secret values (passwords typed through the credential API)."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add(self, value: str) -> None:
        """A secret, and the forms it takes in JSON, HTML and URLs (a console log, a page, a
        trace's network log)."""
        if len(value) < 4:  # shorter strings would redact ordinary text
            return
        self._values |= {
            value,
            json.dumps(value)[1:-1],
            json.dumps(value, ensure_ascii=False)[1:-1],
            html.escape(value),
            html.escape(value, quote=False),
            quote(value, safe=""),
            quote_plus(value),
        }

    @property
    def empty(self) -> bool:
        return not self._values

    def found_in(self, text: str) -> bool:
        """Whether `text` holds a secret, in any of its forms."""
        return any(secret in text for secret in self._values)

    def text(self, value: str) -> str:
        for secret in sorted(self._values, key=len, reverse=True):
            value = value.replace(secret, REDACTED)
        return value

    def data(self, value: bytes) -> bytes:
        for secret in sorted(self._values, key=len, reverse=True):
            value = value.replace(secret.encode(), REDACTED.encode())
        return value

    def zip(self, value: bytes) -> bytes:
        """A zip (a Playwright trace) with secrets replaced in every member."""
        if not self._values:
            return value
        out = io.BytesIO()
        with (
            zipfile.ZipFile(io.BytesIO(value)) as src,
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst,
        ):
            for info in src.infolist():
                dst.writestr(info, self.data(src.read(info)))
        return out.getvalue()


class ConsoleLog:
    """Console messages and page errors of a context while a run holds it (newest kept)."""

    def __init__(self, limit: int = 500) -> None:
        self.messages: deque[dict[str, Any]] = deque(maxlen=limit)
        self.errors: deque[dict[str, Any]] = deque(maxlen=limit)

    def attach(self, context: BrowserContext) -> None:
        context.on("console", self._on_console)
        context.on("weberror", self._on_error)

    def detach(self, context: BrowserContext) -> None:
        context.remove_listener("console", self._on_console)
        context.remove_listener("weberror", self._on_error)

    def _on_console(self, msg: ConsoleMessage) -> None:
        loc = msg.location
        self.messages.append(
            {
                "at": time.time(),
                "type": msg.type,
                "text": msg.text[:4000],
                "url": loc.get("url") if isinstance(loc, dict) else None,
            }
        )

    def _on_error(self, err: WebError) -> None:
        page = err.page
        self.errors.append(
            {
                "at": time.time(),
                "error": str(err.error)[:4000],
                "url": page.url if page is not None else None,
            }
        )


@dataclass(frozen=True, kw_only=True)
class Capture:
    kind: str
    name: str
    content_type: str
    data: bytes
    truncated: bool = False


async def _bounded(make: Callable[[], Awaitable[T]], timeout: float) -> T | None:
    try:
        async with asyncio.timeout(timeout):
            return await make()
    except Exception:
        return None


async def capture_failure(
    page: Page | None,
    console: ConsoleLog,
    *,
    error: BaseException,
    redactor: Redactor,
    max_bytes: int,
    timeout: float,
    prefix: str,
) -> list[Capture]:
    """What a failing page looked like; parts that cannot be had in `timeout` are skipped."""
    out: list[Capture] = []
    url = title = None
    if page is not None and not page.is_closed():
        url = redactor.text(page.url)
        title = await _bounded(page.title, timeout)
        shot = await _screenshot(page, max_bytes, timeout)
        if shot is not None:
            out.append(Capture(kind="screenshot", name=f"{prefix}-screenshot.{shot[1]}", **shot[0]))
        html = await _bounded(lambda: page.evaluate(_REDACTED_HTML), timeout)
        if isinstance(html, str):
            data, cut = _cap(redactor.text(html).encode(), max_bytes)
            out.append(
                Capture(
                    kind="html",
                    name=f"{prefix}-page.html",
                    content_type="text/html; charset=utf-8",
                    data=data,
                    truncated=cut,
                )
            )
    out.append(_log(console, url, title, error, redactor, max_bytes, prefix))
    return out


async def _screenshot(
    page: Page, max_bytes: int, timeout: float
) -> tuple[dict[str, Any], str] | None:
    ms = timeout * 1000

    async def png() -> bytes:
        masks = [page.locator("input[type=password i]")]
        return await page.screenshot(type="png", timeout=ms, mask=masks, animations="disabled")

    data = await _bounded(png, timeout)
    if data is not None and len(data) > max_bytes:  # too big as PNG: try a small JPEG
        data = await _bounded(lambda: page.screenshot(type="jpeg", quality=40, timeout=ms), timeout)
        if data is None or len(data) > max_bytes:
            return None
        return {"content_type": "image/jpeg", "data": data}, "jpg"
    if data is None:
        return None
    return {"content_type": "image/png", "data": data}, "png"


def _log(
    console: ConsoleLog,
    url: str | None,
    title: str | None,
    error: BaseException,
    redactor: Redactor,
    max_bytes: int,
    prefix: str,
) -> Capture:
    messages, errors = list(console.messages), list(console.errors)
    truncated = False
    while True:
        doc = {
            "url": url,
            "title": title,
            "error": {"type": type(error).__qualname__, "message": str(error)[:4000]},
            "console": messages,
            "page_errors": errors,
        }
        data = redactor.text(json.dumps(doc, indent=1, default=str)).encode()
        if len(data) <= max_bytes or not (messages or errors):
            break
        truncated = True  # drop the oldest half of what is left
        messages, errors = messages[len(messages) // 2 :], errors[len(errors) // 2 :]
        if len(messages) <= 1 and len(errors) <= 1:
            messages, errors = [], []
    data, cut = _cap(data, max_bytes)
    return Capture(
        kind="log",
        name=f"{prefix}-log.json",
        content_type="application/json",
        data=data,
        truncated=truncated or cut,
    )


def _cap(data: bytes, max_bytes: int) -> tuple[bytes, bool]:
    return (data, False) if len(data) <= max_bytes else (data[:max_bytes], True)
