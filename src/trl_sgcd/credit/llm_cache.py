"""Disk cache of credit-reference answers: one JSON file per (model, evidence digest), written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

__all__ = ["DiskCache"]


class DiskCache:
    """JSON files keyed by `sha256(model + "\\n" + key)`; writes are atomic (temp file + `os.replace`)."""

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = Path(directory) if directory else None

    def _path(self, model: str, key: str) -> Path:
        digest = hashlib.sha256(f"{model}\n{key}".encode()).hexdigest()
        return self.directory / f"{digest}.json"

    def get(self, model: str, key: str) -> dict | None:
        if self.directory is None:
            return None
        try:
            record = json.loads(self._path(model, key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if record.get("model") == model and record.get("key") == key else None

    def put(self, model: str, key: str, record: dict) -> None:
        if self.directory is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"model": model, "key": key, **record}, f)
            os.replace(tmp, self._path(model, key))
        except OSError:  # a read-only or full disk must not stop training
            pass
