"""Serving the metrics: the API's GET /metrics, a worker's --metrics-port, and the multiprocess
mode of `greenroom api --workers N`."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from greenroom.metrics import REGISTRY

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import Metric

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Together(Collector):
    """Several collectors (or registries) exposed as one."""

    def __init__(self, parts: Iterable[Collector]) -> None:
        self.parts = list(parts)

    def collect(self) -> Iterator[Metric]:
        for part in self.parts:
            yield from part.collect()


def multiprocess() -> bool:
    """Whether this process is one of several sharing their metrics through files."""
    return bool(os.environ.get(MULTIPROC_ENV))


def exposition(*extra: Collector) -> bytes:
    """`extra`'s metrics, then this process's (all processes' in multiprocess mode): in that
    order, a scrape error `extra` counts shows in the same scrape."""
    if multiprocess():
        shared = CollectorRegistry()
        MultiProcessCollector(shared)  # type: ignore[no-untyped-call]
        return generate_latest(Together([*extra, shared]))
    return generate_latest(Together([*extra, REGISTRY]))


def fresh_multiprocess_dir() -> Path:
    """Before `greenroom api --workers N` starts its processes: the directory where they keep
    their metrics, emptied (values of processes gone would otherwise add up). The operator's
    PROMETHEUS_MULTIPROC_DIR if set, else a new temporary directory; the processes inherit it.
    Must be set before prometheus_client is imported in them (it chooses its storage then)."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="greenroom-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def remove_multiprocess_dir(path: Path) -> None:
    """After the processes stopped: their files are of no more use."""
    if path.name.startswith("greenroom-metrics-"):
        shutil.rmtree(path, ignore_errors=True)
    else:
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)


@dataclass
class MetricsServer:
    """A worker's /metrics, served by prometheus_client in a thread of its own."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(host: str, port: int) -> MetricsServer:
    """Serve this process's registry over HTTP (any path answers; Prometheus asks /metrics)."""
    server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    return MetricsServer(server, thread)
