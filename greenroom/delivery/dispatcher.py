"""The delivery loop every worker runs beside its runs: fan events out to subscriptions, claim
due deliveries, send them, record how they went, prune what is old.

Any number of workers do this at once with nothing to elect: fan-out takes turns on a locked
cursor row, claims skip each other's rows, and a worker killed mid-send leaves leases that
expire. Results are written as they come (those that finish during a write go with the next),
in one transaction with the claim that takes their room again; a delivery whose result is lost
(the worker died, the database was down too long) is sent again with the same webhook-id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections import defaultdict

import structlog

from greenroom.delivery.send import Sender, Sent, finished
from greenroom.model import Channel
from greenroom.settings import Settings
from greenroom.storage.dispatch import Claimed, Finished
from greenroom.storage.store import RunStore
from greenroom.storage.threads import StoreThreads

log = structlog.get_logger("greenroom.delivery")

#: How often an idle worker looks for new events and due deliveries.
POLL_SECONDS = 0.1
FAN_OUT_BATCH = 500
#: How soon a write of results that failed (the database is away) is tried again.
RETRY_SECONDS = 0.5
PRUNE_EVERY_SECONDS = 600.0


class Dispatcher:
    def __init__(self, store: RunStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.log = log.bind(deliverer=self.id)
        self._stopping = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()
        self._results: list[Finished] = []
        #: Set when there is something to do: fan-out made deliveries, a send ended (its result
        #: to write, its room to fill), or the dispatcher is stopping.
        self._wake = asyncio.Event()
        self._db = StoreThreads(3, "delivery")
        # Deliveries can take as long as their timeout, then wait for the next flush.
        self.lease_seconds = settings.delivery_timeout_seconds * 2 + 10.0

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Deliver until stopped; then let sends in flight finish (within their timeout) and
        write their results."""
        sender = Sender(self.settings, self.store.reports)
        loops = [
            asyncio.create_task(self._fan_out_loop(), name="fan-out"),
            asyncio.create_task(self._prune_loop(), name="delivery-prune"),
        ]
        try:
            await self._exchange_loop(sender)
            if self._sending:
                await asyncio.wait(self._sending, timeout=self.settings.delivery_timeout_seconds)
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self._flush()
            await sender.close()
            self._db.shutdown(wait=False)

    async def _poll(self, event: asyncio.Event) -> None:
        """Until `event` is set (there is work, or a stop), or the poll interval has passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=POLL_SECONDS)

    async def _fan_out_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                read = await self._db(self.store.dispatch.fan_out, limit=FAN_OUT_BATCH)
            except Exception as exc:
                self.log.warning("fan-out failed; trying again", error=str(exc))
                read = 0
            if read:
                self._wake.set()
            if read < FAN_OUT_BATCH:
                await self._poll(self._stopping)

    async def _exchange_loop(self, sender: Sender) -> None:
        """Write the results so far and claim for the room there is, in one transaction; then
        wait for something to do."""
        limit = self.settings.delivery_concurrency
        while not self._stopping.is_set():
            room = limit - len(self._sending)
            if self._sending and room < max(1, limit // 4):
                room = 0  # claim for several at once: a claim per send costs more than the send
            self._wake.clear()
            results, self._results = self._results, []
            if not results and not room:
                await self._poll(self._wake)
                continue
            try:
                claimed = await self._db(
                    self.store.dispatch.exchange,
                    self.id,
                    results,
                    limit=room,
                    lease_seconds=self.lease_seconds,
                    disable_after=self.settings.delivery_disable_after_days * 86400,
                )
            except Exception as exc:
                self.log.warning(
                    "recording and claiming deliveries failed; trying again",
                    results=len(results),
                    error=str(exc),
                )
                self._results = results + self._results
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=RETRY_SECONDS)
                continue
            for group in _groups(claimed):
                task = asyncio.create_task(self._send(sender, group))
                self._sending.add(task)
                task.add_done_callback(self._sent)
            await self._poll(self._wake)

    def _sent(self, task: asyncio.Task[None]) -> None:
        """Wake the loop once the send is no longer counted: its result to write, its room to
        fill."""
        self._sending.discard(task)
        self._wake.set()

    async def _send(self, sender: Sender, group: list[Claimed]) -> None:
        subscription = group[0].subscription
        try:
            sent = await sender.send(subscription, [c.event for c in group])
        except Exception as exc:  # a bug, not a receiver's failure: retried by the schedule
            self.log.exception("delivery failed unexpectedly", subscription=subscription.id)
            sent = Sent(ok=False, error=f"internal error: {type(exc).__name__}")
        now = time.time()
        delays = self.settings.delivery_retry_delays
        self._results += [finished(claimed, sent, now, delays=delays) for claimed in group]

    async def _flush(self) -> None:
        """At shutdown, write the results left; lost if the database is away (the deliveries
        are sent again when their leases end)."""
        results, self._results = self._results, []
        if not results:
            return
        try:
            await self._db(
                self.store.dispatch.finish,
                self.id,
                results,
                disable_after=self.settings.delivery_disable_after_days * 86400,
            )
        except Exception as exc:
            self.log.warning("recording deliveries failed", results=len(results), error=str(exc))

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_EVERY_SECONDS)
            try:
                await self._db(
                    self.store.deliveries.prune,
                    older_than=self.settings.delivery_log_days * 86400,
                )
                days = self.settings.event_retention_days
                if days is not None:
                    await self._db(self.store.events.prune, older_than=days * 86400)
            except Exception as exc:
                self.log.warning("pruning deliveries and events failed", error=str(exc))


def _groups(claimed: list[Claimed]) -> list[list[Claimed]]:
    """What goes out together: a digest subscription's deliveries in one mail, any other
    delivery on its own."""
    digests: dict[str, list[Claimed]] = defaultdict(list)
    groups = []
    for c in claimed:
        s = c.subscription
        if s.channel is Channel.EMAIL and s.digest_minutes:
            digests[s.id].append(c)
        else:
            groups.append([c])
    return groups + list(digests.values())
