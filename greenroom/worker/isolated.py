"""Process isolation: a run that executes in its own OS process, with its own browser.

For workflows declared with isolation="process". The worker keeps the lease (heartbeats,
cancellation, the run's end) and tells the child, one JSON line at a time on its stdin, the
request, then each lease renewal and any pause; the child imports the workflow's module and
executes the run as a worker does (greenroom.worker.execute): it replays and executes the steps
under the same fencing token (and stops before a step once the lease may have lapsed), saves the
session and diagnostics, and reports the run's Outcome, serialised, in a file (not on stdout,
which the workflow's own prints share). The child leads its own process group: at a run
timeout, a cancellation or a worker shutdown the worker kills that group; if the worker dies,
the kernel kills the child (PR_SET_PDEATHSIG). Its browser, started in a group of its own, dies
with the child through the launcher's watchdog (greenroom.browser.launch).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from greenroom import tracing
from greenroom.app import App
from greenroom.browser.runtime import BrowserRuntime
from greenroom.errors import ConfigError
from greenroom.logs import bind_run, configure_logging
from greenroom.model import Lease
from greenroom.settings import Settings
from greenroom.storage import open_store
from greenroom.tracing import configure_tracing, shutdown_tracing
from greenroom.worker.execute import Outcome, RunServices, execute_workflow
from greenroom.worker.writer import RunWriter
from greenroom.workflow import Workflow


class IsolatedRun:
    """The worker's side: start the child, forward pauses, kill its group when told to stop."""

    def __init__(self, settings: Settings, lease: Lease, workflow: Workflow) -> None:
        self.settings = settings
        self.lease = lease
        self.workflow = workflow
        self.pid: int | None = None
        self._pause_requested = False
        self._stdin: asyncio.StreamWriter | None = None

    def request_pause(self) -> None:
        self._pause_requested = True
        self._send({"pause": True})

    def lease_renewed(self, valid_until: float) -> None:
        self._send({"valid_until": valid_until})

    def _send(self, message: dict[str, Any]) -> None:
        if self._stdin is not None and not self._stdin.is_closing():
            self._stdin.write(json.dumps(message).encode() + b"\n")

    async def run(self) -> Outcome:
        with tempfile.TemporaryDirectory(prefix="greenroom-run-") as tmp:
            result = Path(tmp) / "result.json"
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "from greenroom.worker.isolated import main; main()",
                stdin=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
            self.pid = proc.pid
            assert proc.stdin is not None
            try:
                proc.stdin.write(json.dumps(self._request(result)).encode() + b"\n")
                self._stdin = proc.stdin
                code = await proc.wait()
            except BaseException:
                kill_group(proc.pid)  # a timeout, a cancellation or a shutdown: nothing stays
                await asyncio.shield(proc.wait())
                raise
            finally:
                self.pid = self._stdin = None
                proc.stdin.close()
            if not result.exists():
                raise RuntimeError(
                    f"the run's process exited with {_exit_status(code)} before reporting"
                )
            return Outcome.loads(result.read_text())

    def _request(self, result: Path) -> dict[str, Any]:
        lease = self.lease
        return {
            "module": self.workflow.fn.__module__,
            "workflow": self.workflow.name,
            # Secrets travel over the pipe, never on the command line or in the environment.
            "settings": {
                k: v.get_secret_value() if isinstance(v, SecretStr) else v
                for k, v in self.settings.model_dump().items()
            },
            "run_id": lease.run.id,
            "worker_id": lease.worker_id,
            "token": lease.token,
            "expires_at": lease.expires_at,
            "lease_seconds": lease.seconds,
            "pause_requested": self._pause_requested,
            "result": str(result),
            "trace_parent": tracing.current_traceparent(),  # its steps join the attempt's span
        }


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _exit_status(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


# -- the child -----------------------------------------------------------------------------


def _find_app(module_name: str, workflow: str) -> App:
    module = importlib.import_module(module_name)
    for value in vars(module).values():
        if isinstance(value, App) and workflow in value.workflows:
            return value
    raise ConfigError(
        f"process isolation: module {module_name!r} has no App with workflow {workflow!r} "
        "at module level (declare isolated workflows on an App defined in an importable module)"
    )


class _Messages:
    """What the worker tells the child after the request: lease renewals and pauses, read on a
    thread so a step that blocks the event loop does not hold them up."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.valid_until: float = request["expires_at"]
        self.paused = bool(request["pause_requested"])
        self.on_pause: Any = None

    def listen(self, loop: asyncio.AbstractEventLoop) -> None:
        def read() -> None:
            for line in sys.stdin:
                message = json.loads(line)
                if "valid_until" in message:
                    self.valid_until = float(message["valid_until"])
                if message.get("pause"):
                    self.paused = True
                    if self.on_pause is not None:
                        loop.call_soon_threadsafe(self.on_pause)

        threading.Thread(target=read, name="greenroom-worker-messages", daemon=True).start()


async def _execute(request: dict[str, Any]) -> Outcome:
    messages = _Messages(request)
    messages.listen(asyncio.get_running_loop())
    settings = Settings(**request["settings"])
    configure_logging(settings)  # its lines join the worker's, on the stderr they share
    configure_tracing("greenroom-worker")
    app = _find_app(request["module"], request["workflow"])
    store = open_store(settings.db, migrate=False, pool_size=2)
    runtime = BrowserRuntime(settings)

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    try:
        run = store.runs.get_run(request["run_id"])
        lease = Lease(
            run=run,
            worker_id=request["worker_id"],
            token=request["token"],
            expires_at=request["expires_at"],
            seconds=request["lease_seconds"],
        )
        bind_run(lease)
        with tracing.under(request.get("trace_parent")):
            services = RunServices(
                app=app, store=store, writer=RunWriter(store.runs, db), browser=runtime, db=db
            )
            ctx = services.context(
                lease,
                history=store.runs.steps(run.id),
                lease_valid_until=lambda: messages.valid_until,  # renewed by the worker
                await_checkpoints=True,  # the worker may kill this process group at any moment
            )
            messages.on_pause = ctx.request_pause
            if messages.paused:
                ctx.request_pause()
            try:
                return await execute_workflow(services, ctx, app.workflows[request["workflow"]])
            finally:
                assert ctx.browser is not None
                await ctx.browser.close()
    finally:
        await runtime.close()
        store.backend.close()


def main() -> None:
    if sys.platform.startswith("linux"):
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the worker died before the line above
            sys.exit(1)
    request = json.loads(sys.stdin.readline())
    try:
        outcome = asyncio.run(_execute(request))
    except Exception as exc:  # the run could not even start here (import, database)
        outcome = Outcome.failed(exc)
    shutdown_tracing()  # its spans exported before it reports
    path = Path(request["result"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(outcome.dumps())
    tmp.replace(path)
