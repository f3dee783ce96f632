"""A tiny web site for the browser tests: a login that sets a session cookie and counts logins,
a protected page, storage-using pages, a form around another page's frame, and hostile pages
(one never loads, one loops forever). It records every request it receives."""

from __future__ import annotations

import contextlib
import html
import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PASSWORD_PREFIX = "s3cret-pw-for-"

_HOME = """<!doctype html><title>home</title><p id="user">{user}</p><script>
localStorage.setItem('who', '{user}'); sessionStorage.setItem('tab', '{user}-tab');
</script>"""

_ME = """<!doctype html><title>me</title><p id="user">{user}</p><p id="local"></p>
<p id="session"></p><script>
document.getElementById('local').textContent = localStorage.getItem('who') || '';
document.getElementById('session').textContent = sessionStorage.getItem('tab') || '';
</script>"""

_FORM = """<!doctype html><title>login</title><form method="post" action="/login">
<input name="user" id="user"><input type="password" name="password" id="password">
<button id="go">Sign in</button></form>"""

_NOISY = (
    """<!doctype html><title>noisy</title><p>noisy page</p><script>
console.log('hello from the page'); console.error('something went wrong');
setTimeout(() => { throw new Error('boom in the page'); }, 0);
</script><input type="password" id="pw"><input id="note" value="">
<p id="filler">"""
    + "lorem ipsum " * 300
    + "</p>"
)

_STATIC = {
    "/form": _FORM,
    "/noisy": _NOISY,
    "/loop": "<title>loop</title><script>while (true) {}</script>",
}


class Site:
    def __init__(self) -> None:
        self.logins: Counter[str] = Counter()
        self.hits: Counter[str] = Counter()
        #: Every request's path with its query, headers and body, as text (what the site saw).
        self.received: list[str] = []
        self.sessions: dict[str, str] = {}
        self.release = threading.Event()
        handler = type("BoundHandler", (Handler,), {"site": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    @staticmethod
    def password(user: str) -> str:
        return PASSWORD_PREFIX + user

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


class Handler(BaseHTTPRequestHandler):
    site: Site

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _user(self) -> str | None:
        for part in self.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "sid":
                return self.site.sessions.get(value)
        return None

    def _login(self, user: str, password: str) -> None:
        if not user or password != self.site.password(user):
            self._send(401, "<p id='error'>bad credentials</p>")
            return
        token = secrets.token_hex(16)
        self.site.sessions[token] = user
        self.site.logins[user] += 1
        self.send_response(303)
        self.send_header("Location", "/home")
        self.send_header("Set-Cookie", f"sid={token}; Path=/; HttpOnly")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _record(self, body: str = "") -> None:
        self.site.received.append(f"{self.command} {self.path}\n{self.headers}\n{body}")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length).decode(errors="replace")
        self._record(body)
        form = parse_qs(body)
        self._login(form.get("user", [""])[0], form.get("password", [""])[0])

    def do_GET(self) -> None:
        self._record()
        url = urlparse(self.path)
        self.site.hits[url.path] += 1
        query = parse_qs(url.query)
        if url.path == "/login":
            self._login(query.get("user", [""])[0], query.get("password", [""])[0])
        elif url.path in ("/home", "/me"):
            user = self._user()
            if user is None:
                self._send(401, "<p id='login-required'>please log in</p>")
            else:
                self._send(200, (_HOME if url.path == "/home" else _ME).format(user=user))
        elif url.path == "/logout":
            self._send(200, "<p>bye</p>", {"Set-Cookie": "sid=; Path=/; Max-Age=0"})
        elif url.path == "/framed":  # this site's form around a frame of `src`
            src = html.escape(query.get("src", ["about:blank"])[0])
            self._send(200, _FORM + f'<iframe id="inner" src="{src}"></iframe>')
        elif url.path == "/hang":
            self.site.release.wait(60)
            self._send(200, "<p>late</p>")
        else:
            plain = f"<title>page</title><p id='path'>{url.path}</p>"
            self._send(200, _STATIC.get(url.path, plain))


@contextlib.contextmanager
def serve_site() -> Iterator[Site]:
    site = Site()
    site.start()
    try:
        yield site
    finally:
        site.stop()
