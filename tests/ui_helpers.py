"""Signing in to the console with a plain HTTP client, as a browser would: the sign-in form's
CSRF token and login cookie, then the session cookie."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import httpx

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


@contextlib.contextmanager
def sign_in(base_url: str, key: str) -> Iterator[httpx.Client]:
    """A client holding a session for `key`; the sign-in must succeed."""
    with httpx.Client(base_url=base_url, timeout=30) as c:
        form = c.get("/ui/login")
        done = c.post("/ui/login", data={"api_key": key, "csrf": csrf_of(form.text)})
        assert done.status_code == 303 and done.headers["location"] == "/ui/", done.text
        yield c


def page_csrf(c: httpx.Client, path: str = "/ui/") -> str:
    """The CSRF token of the session's pages."""
    page = c.get(path)
    assert page.status_code == 200, page.text
    return csrf_of(page.text)
