"""Where failure artifacts (screenshots, HTML, logs, traces) are kept: a small interface and a
local-directory implementation. The database only holds each file's location."""

from __future__ import annotations

import abc
import re
import shutil
from pathlib import Path

from greenroom.settings import Settings

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class ArtifactStore(abc.ABC):
    @abc.abstractmethod
    def put(self, run_id: str, name: str, data: bytes) -> str:
        """Store a file of a run; its location (what `get` takes)."""

    @abc.abstractmethod
    def get(self, location: str) -> bytes: ...

    @abc.abstractmethod
    def delete_run(self, run_id: str) -> None:
        """Remove every file of a run (retention)."""


class LocalArtifactStore(ArtifactStore):
    """Files under root/<run id>/; locations are paths relative to root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _run_dir(self, run_id: str) -> Path:
        return self.root / _SAFE.sub("_", run_id)

    def put(self, run_id: str, name: str, data: bytes) -> str:
        directory = self._run_dir(run_id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / _SAFE.sub("_", name)
        path.write_bytes(data)
        return str(path.relative_to(self.root))

    def get(self, location: str) -> bytes:
        path = (self.root / location).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"artifact location {location!r} is outside the artifact store")
        return path.read_bytes()

    def delete_run(self, run_id: str) -> None:
        shutil.rmtree(self._run_dir(run_id), ignore_errors=True)


def default_artifact_store(settings: Settings) -> ArtifactStore:
    """settings.artifacts_dir, else `artifacts/` beside the SQLite file, else .greenroom/."""
    if settings.artifacts_dir:
        root = Path(settings.artifacts_dir)
    elif settings.db.startswith("sqlite:///"):
        root = Path(settings.db.removeprefix("sqlite:///")).parent / "artifacts"
    else:
        root = Path(".greenroom") / "artifacts"
    return LocalArtifactStore(root)
