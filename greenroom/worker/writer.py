"""Group commit of a worker's run writes: checkpoints and ends that fall due together share one
transaction, so under load the database sees a few statements per batch, not per run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import structlog

from greenroom.errors import LeaseLost
from greenroom.model import Lease, RunState
from greenroom.storage import DbCall
from greenroom.storage.runs import Runs
from greenroom.storage.writes import Checkpoint, End, Written

#: Writes in one transaction, at most.
MAX_BATCH = 100
#: Seconds between tries of a batch that failed for a reason that may pass (a lost connection,
#: a restarting database).
RETRY_DELAYS = (0.4, 0.8, 1.6, 2.0)
#: A try that took longer than this to fail (waiting for a connection, say) is not repeated:
#: trying again would keep the worker's other writes waiting as long again.
SLOW_FAILURE_SECONDS = 5.0

log = structlog.get_logger("greenroom.writer")


class RunWriter:
    """Writes are committed in the order they were handed in: one batch at a time, and whatever
    arrives while a batch commits goes into the next. A batch that fails for a reason that may
    pass is tried again (every write is fenced by its lease, so that is safe); one that fails
    otherwise is written again a write at a time, so that one bad write fails alone. Each caller
    learns its own outcome: done, or LeaseLost for a run whose lease is gone, or its error."""

    def __init__(
        self, runs: Runs, db: DbCall, *, retry_delays: Sequence[float] = RETRY_DELAYS
    ) -> None:
        self._runs = runs
        self._db = db
        self._retry_delays = retry_delays
        self._pending: list[tuple[Checkpoint | End, asyncio.Future[Any]]] = []
        self._flushing: asyncio.Task[None] | None = None

    def checkpoint(self, checkpoint: Checkpoint) -> asyncio.Future[None]:
        """Hand in a checkpoint; the future is done when it is committed. Its run need not wait
        for it: the run's next step does, and the run's end carries it if still unsure."""
        return self._submit(checkpoint)

    async def note(self, lease: Lease, reason: str, detail: dict[str, Any]) -> None:
        """Add an entry to the run's timeline now (not batched: notes are rare)."""
        await self._db(self._runs.note, lease, reason, detail)

    async def end(self, end: End) -> RunState:
        """The state the run took, once its end is committed."""
        state: RunState = await self._submit(end)
        return state

    def _submit(self, write: Checkpoint | End) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((write, future))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush(), name="greenroom-writer")
        return future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                await self._commit(batch)
        finally:
            self._flushing = None

    async def _commit(self, batch: list[tuple[Checkpoint | End, asyncio.Future[Any]]]) -> None:
        checkpoints = [w for w, _ in batch if isinstance(w, Checkpoint)]
        ends = [w for w, _ in batch if isinstance(w, End)]
        try:
            written = await self._write(checkpoints, ends)
        except Exception as exc:
            if len(batch) > 1 and not self._runs.backend.is_transient(exc):
                await self._commit_each(batch)
            else:
                for write, future in batch:
                    self._fail(write, future, exc)
            return
        except BaseException as exc:  # nobody may wait forever, whatever happened
            for write, future in batch:
                self._fail(write, future, RuntimeError(f"writer stopped: {exc!r}"))
            raise
        for write, future in batch:
            lease = write.lease
            if (lease.run.id, lease.token) in written.refused:
                lost = LeaseLost(f"run {lease.run.id}: lease {lease.token} is no longer held")
                self._fail(write, future, lost)
            elif future.done():  # its caller stopped waiting (cancelled)
                continue
            elif isinstance(write, End):
                future.set_result(written.states[lease.run.id])
            else:
                future.set_result(None)

    async def _commit_each(self, batch: list[tuple[Checkpoint | End, asyncio.Future[Any]]]) -> None:
        for i, item in enumerate(batch):
            try:
                await self._commit([item])
            except BaseException as exc:
                for write, future in batch[i + 1 :]:
                    self._fail(write, future, RuntimeError(f"writer stopped: {exc!r}"))
                raise

    async def _write(self, checkpoints: list[Checkpoint], ends: list[End]) -> Written:
        delays = iter(self._retry_delays)
        retried = False
        while True:
            started = time.monotonic()
            try:
                written: Written = await self._db(self._runs.write, checkpoints, ends)
            except Exception as exc:
                slow = time.monotonic() - started > SLOW_FAILURE_SECONDS
                delay = next(delays, None)
                if delay is None or slow or not self._runs.backend.is_transient(exc):
                    raise
                runs = {c.lease.run.id for c in checkpoints} | {e.lease.run.id for e in ends}
                log.warning("writing runs failed; retrying", runs=sorted(runs), error=str(exc))
                await asyncio.sleep(delay)
                retried = True
                continue
            if retried:  # an earlier try may have committed, unacknowledged
                await self._applied_before(ends, written)
            return written

    async def _applied_before(self, ends: list[End], written: Written) -> None:
        """Ends refused because an earlier try committed them (its acknowledgement was lost):
        the run is still on this lease's token, in the state the end gave it."""
        for end in ends:
            key = (end.lease.run.id, end.lease.token)
            if key not in written.refused:
                continue
            try:
                run = await self._db(self._runs.get_run, end.lease.run.id)
            except Exception:  # the batch is written: this end stays reported as refused
                continue
            took = {end.state, RunState.PAUSED} if end.state is RunState.QUEUED else {end.state}
            if run.lease_token == end.lease.token and run.state in took:
                written.refused.discard(key)
                written.states[run.id] = run.state

    @staticmethod
    def _fail(write: Checkpoint | End, future: asyncio.Future[Any], exc: Exception) -> None:
        if not future.done():
            future.set_exception(exc)
            if isinstance(write, Checkpoint):
                future.exception()  # its run's end may carry it instead of awaiting it
