"""What a worker runs beside its runs: event delivery (greenroom.delivery), schedules
(greenroom.schedules) and the license pass (greenroom.licenses), each in its own task, each able
to be turned off."""

from __future__ import annotations

import asyncio
import importlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from greenroom.app import App
    from greenroom.settings import Settings


class _Loop(Protocol):
    async def run(self) -> None: ...
    def stop(self) -> None: ...


class SideLoops:
    def __init__(self, app: App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        on = {
            "delivery": settings.delivery_enabled,
            "schedules": settings.schedules_enabled,
            "licenses": settings.licenses_enabled,
        }
        self.wanted = [kind for kind, enabled in on.items() if enabled]
        self._loops: dict[str, _Loop] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(kind), name=kind) for kind in self.wanted]

    async def _run(self, kind: str) -> None:
        """Their modules (aiohttp, SMTP, cron) are imported in a thread: the worker's loop goes
        on claiming meanwhile."""
        loop: _Loop
        if kind == "delivery":
            await asyncio.to_thread(importlib.import_module, "greenroom.delivery.dispatcher")
            from greenroom.delivery.dispatcher import Dispatcher

            loop = Dispatcher(self.app.store, self.settings)
        elif kind == "schedules":
            await asyncio.to_thread(importlib.import_module, "greenroom.schedules.runner")
            from greenroom.schedules.runner import Scheduler

            loop = Scheduler(self.app)
        else:
            from greenroom.licenses.runner import LicenseLoop

            loop = LicenseLoop(self.app.store, self.settings)
        self._loops[kind] = loop
        await loop.run()

    async def stop(self) -> None:
        """Sends in flight finish (within their timeout) and their results are written; a
        round of firing ends with its transaction."""
        for task in self._tasks:
            loop = self._loops.get(task.get_name())
            if loop is None:
                task.cancel()
            else:
                loop.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
