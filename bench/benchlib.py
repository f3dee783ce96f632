"""Shared helpers for the benchmarks: a fresh database per run, quiet logs, percentiles, JSON out.

Every benchmark takes `--db URL`:
  (none) or `sqlite`        a fresh SQLite file in a temporary directory, removed afterwards
  `sqlite:///path/file.db`  a new SQLite file there (refused if it exists), removed afterwards
  `postgresql://…`          the server to use: a uniquely named database is created on it for this
                            run and dropped afterwards (the database in the URL is only used to
                            connect for CREATE/DROP DATABASE; default `postgres`)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import secrets
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--db",
        default="sqlite",
        help="sqlite (default: temp file), sqlite:///new/file.db, or postgresql://server",
    )
    return p


def backend_name(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def quiet_logs() -> None:
    """Only warnings and errors, on stderr: stdout carries the JSON result.

    The engine logs every run at info level; a console renderer on a terminal is not what a
    production deployment pays for, so benchmarks leave it out.
    """
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _pg_with_db(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def _pg_admin(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


@contextlib.contextmanager
def fresh_database(spec: str, label: str = "bench") -> Iterator[str]:
    """A database URL that this run owns, removed afterwards."""
    if spec in ("", "sqlite"):
        tmp = Path(tempfile.mkdtemp(prefix=f"greenroom-{label}-"))
        try:
            yield f"sqlite:///{tmp / 'greenroom.db'}"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    elif spec.startswith("sqlite:///"):
        path = Path(spec.removeprefix("sqlite:///"))
        if path.exists():
            raise SystemExit(f"{path} exists: give a new file, benchmarks own their database")
        try:
            yield spec
        finally:
            for extra in ("", "-wal", "-shm"):
                Path(f"{path}{extra}").unlink(missing_ok=True)
            shutil.rmtree(f"{path}.workers", ignore_errors=True)
    elif spec.startswith(("postgresql://", "postgres://")):
        admin = spec if urlsplit(spec).path not in ("", "/") else _pg_with_db(spec, "postgres")
        name = f"greenroom_bench_{label}_{secrets.token_hex(4)}"
        _pg_admin(admin, f"CREATE DATABASE {name}")
        try:
            yield _pg_with_db(admin, name)
        finally:
            _pg_admin(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    else:
        raise SystemExit(f"unsupported --db {spec!r}: use sqlite, sqlite:///file or postgresql://")


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """n, p50, p90, p99, min and max of a sample."""
    out: dict[str, Any] = {"n": len(values)}
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        out[name] = round(percentile(values, q), digits)
    out["min"] = round(min(values), digits) if values else None
    out["max"] = round(max(values), digits) if values else None
    return out


def ms(seconds: Sequence[float]) -> list[float]:
    return [s * 1000 for s in seconds]


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
    }


def server_version(url: str) -> str:
    if backend_name(url) == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0] if row else '?'}"


def emit(result: dict[str, Any]) -> None:
    """The one JSON object a benchmark prints."""
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()
