"""One directory per training run; every file is written atomically (temp file + rename).

    config.json     the resolved config
    metrics.jsonl   one JSON object per iteration
    checkpoints/    safetensors tensors + JSON manifests (see checkpoint.py)
    summary.json    solved?, time-to-threshold, steps, episodes
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from esrl.errors import InputError


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _clean(obj: Any) -> Any:
    """JSON-safe: non-finite floats become null (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), allow_nan=False, sort_keys=False)


class RunDir:
    """A run directory on disk; construct with `create` (new run) or `open` (resume, evaluate)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.checkpoints = path / "checkpoints"
        # each metrics line also goes to these (esrl.runs.sinks: TensorBoard, the caller's callbacks)
        self.sinks: list[Callable[[dict[str, Any]], Any]] = []
        self.purge_step: int | None = None  # set by a resume: the first env step the killed session may have logged

    @staticmethod
    def check_new(path: str | Path, overwrite: bool) -> Path:
        """Validate that a new run may be written at `path`; changes nothing on disk."""
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise InputError("run_dir", f"{p} exists and is not a directory")
        if p.is_dir() and any(p.iterdir()):
            if not overwrite:
                raise InputError("run_dir", f"{p} already holds files", "--resume RUN_DIR to continue a run, or "
                                 "--overwrite to replace one")
            if not (p / "config.json").is_file():
                raise InputError("run_dir", f"{p} is not empty and holds no esrl run: --overwrite replaces only runs",
                                 "an empty or new directory, or an esrl run directory")
        probe = p if p.exists() else next((a for a in p.absolute().parents if a.exists()), Path("/"))
        if not os.access(probe, os.W_OK | os.X_OK):
            raise InputError("run_dir", f"cannot write under {probe}", "a writable directory")
        return p

    @classmethod
    def create(cls, path: str | Path, overwrite: bool) -> RunDir:
        p = cls.check_new(path, overwrite)
        try:
            if p.is_dir() and overwrite:
                shutil.rmtree(p)
            (p / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError("run_dir", f"cannot create {p}: {exc.strerror}") from None
        return cls(p)

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        p = Path(path)
        if not (p / "config.json").is_file():
            raise InputError("run_dir", f"{p} is not an esrl run directory (no config.json)")
        return cls(p)

    # --- files ----------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> None:
        atomic_write(self.path / name, (json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n").encode())

    def read_json(self, name: str) -> Any:
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError("run_dir", f"cannot read {self.path / name}: {exc}") from None

    def append_metrics(self, record: dict[str, Any]) -> bool:
        """One line per call, written with a single write so that a kill leaves whole lines, then handed to
        every sink; False when a sink returned False (a callback asking the run to stop)."""
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(dumps(record) + "\n")
        keep_going = True
        for sink in self.sinks:
            if sink(dict(record)) is False:  # a copy: one sink changing its line changes no other's
                keep_going = False
        return keep_going

    def read_metrics(self) -> list[dict[str, Any]]:
        """All complete metric lines (a torn last line from a kill is skipped)."""
        out = []
        try:
            lines = (self.path / "metrics.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def truncate_metrics(self, iterations: int) -> None:
        """Keep only the lines of iterations < `iterations` (those the checkpoint covers)."""
        kept = [r for r in self.read_metrics() if r.get("iteration", 0) < iterations]
        self.purge_step = max((int(r.get("env_steps") or 0) + 1 for r in kept), default=0)
        atomic_write(self.path / "metrics.jsonl", "".join(dumps(r) + "\n" for r in kept).encode())
