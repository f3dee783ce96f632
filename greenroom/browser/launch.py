"""Finding Chromium and launching it so that it never outlives its worker.

On Linux each browser starts through a small wrapper that (1) asks the kernel to kill Chromium
when its parent (Playwright's driver) dies (PR_SET_PDEATHSIG) and (2) leaves a watchdog beside
it that kills the browser's whole process group once the worker process is gone. Together they
cover a SIGKILLed worker, a killed driver, and a driver that hangs instead of exiting.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from greenroom.errors import ConfigError

if TYPE_CHECKING:
    from greenroom.settings import Settings

#: Flags for headless Chromium in containers and on servers (no sandbox, GPU or background calls).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]
SYSTEM_CHROMIUM = "/usr/bin/chromium"


class BrowserNotFound(ConfigError):
    """No Chromium to launch."""


@dataclass(frozen=True)
class FoundBrowser:
    path: str
    #: "settings", "system" or "playwright": where it was found, for the log.
    source: str


def find_chromium(configured: str | None, playwright_path: str | None) -> FoundBrowser:
    """The Chromium to use: the configured one, the system's, then Playwright's own download."""
    if configured:
        if not os.access(configured, os.X_OK):
            raise BrowserNotFound(
                f"browser_executable {configured!r} is not an executable file "
                "(GREENROOM_BROWSER_EXECUTABLE)"
            )
        return FoundBrowser(configured, "settings")
    for candidate in (SYSTEM_CHROMIUM, shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return FoundBrowser(candidate, "system")
    if playwright_path and os.access(playwright_path, os.X_OK):
        return FoundBrowser(playwright_path, "playwright")
    raise BrowserNotFound(
        "no Chromium found: install one with `uv run playwright install chromium` or your system's "
        "package (e.g. `apt-get install chromium`), or set GREENROOM_BROWSER_EXECUTABLE to a "
        "Chromium or Chrome binary"
    )


def find_browser(settings: Settings) -> FoundBrowser:
    """The Chromium a worker will launch, found outside a worker (the demo, greenroom doctor);
    without one, one line that says how to get it."""
    try:
        return find_chromium(settings.browser_executable, None)
    except BrowserNotFound:
        if settings.browser_executable:
            raise
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        bundled = pw.chromium.executable_path
    return find_chromium(None, bundled)


_WRAPPER = r'''#!{python} -S
"""Runs Chromium for a greenroom worker; see greenroom/browser/launch.py."""
import ctypes, os, shutil, signal, sys, time

real = os.environ.pop("GREENROOM_CHROMIUM")
worker = int(os.environ.pop("GREENROOM_WORKER_PID", "0"))
pidfile = os.environ.pop("GREENROOM_BROWSER_PIDFILE", "")
me = os.getpid()
if pidfile:
    with open(pidfile, "w") as f:
        f.write(str(me))


def gone(pid):
    try:
        with open(f"/proc/{{pid}}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


if worker and os.fork() == 0:
    # Watchdog: holds none of the browser's pipes, so a crash is seen at once.
    os.closerange(0, 65536)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    while os.getppid() == me and not gone(worker):
        time.sleep(0.25)
    if gone(worker) and pidfile:  # the worker cannot clean its launch directory any more
        shutil.rmtree(os.path.dirname(pidfile), ignore_errors=True)
    try:  # the browser or the worker is gone: nothing of this browser may stay
        os.killpg(me, signal.SIGKILL)
    finally:
        os._exit(0)
parent = os.getppid()
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() != parent:
    sys.exit(1)
os.execv(real, [real, *sys.argv[1:]])
'''


def write_wrapper(directory: Path) -> Path | None:
    """The launcher script for Linux; None elsewhere (Chromium is then launched directly)."""
    if not sys.platform.startswith("linux"):
        return None
    path = directory / "chromium-wrapper"
    path.write_text(_WRAPPER.format(python=sys.executable))
    path.chmod(0o700)
    return path


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every process in a process group (Linux; 0 elsewhere)."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state (stat field 3): pgrp is field 5, rss (pages) field 24.
        if int(fields[2]) == pgid:
            total += int(fields[21]) * page
    return total


def process_rss_bytes(pid: int) -> int:
    """Resident memory of one process (Linux; 0 elsewhere or once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def browser_processes() -> dict[int, list[int]]:
    """Live browser processes greenroom started, by the pid of the process that started them:
    the launcher marks every one with GREENROOM_BROWSER_OF=<pid> in its environment (Linux)."""
    mark = b"GREENROOM_BROWSER_OF="
    owners: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return owners
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
            at = env.find(mark)
            if at < 0:
                continue
            owner = int(env[at + len(mark) : env.index(b"\0", at)])
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            continue
        if state not in ("Z", "X"):
            owners.setdefault(owner, []).append(int(entry))
    return owners


def browser_rss_by_owner() -> dict[int, int]:
    """Resident memory of those browser processes, by the pid of the process that started them."""
    return {
        owner: sum(process_rss_bytes(pid) for pid in pids)
        for owner, pids in browser_processes().items()
    }
