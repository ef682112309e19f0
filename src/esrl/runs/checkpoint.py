"""Checkpoints: tensors in safetensors, plus a JSON manifest; never pickle.

A checkpoint is complete when its manifest exists: the tensor file is written first, then
the manifest (with the tensor file's SHA-256), each atomically. Loading checks the format
version, the algorithm, the hash and the shapes, and refuses anything else with an
InputError naming the `checkpoint` field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from esrl.errors import InputError
from esrl.runs.rundir import atomic_write

FORMAT_VERSION = 1
KEEP = 3


def save(directory: Path, algorithm: str, iteration: int, tensors: dict[str, np.ndarray],
         meta: dict[str, Any]) -> Path:
    """Write checkpoint `iteration` and drop all but the newest KEEP; returns the manifest path."""
    for name, arr in tensors.items():
        if not np.all(np.isfinite(arr)):
            raise FloatingPointError(f"refusing to checkpoint non-finite tensor {name!r}")
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"ckpt_{iteration:08d}"
    blob = st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()})
    atomic_write(directory / f"{stem}.safetensors", blob)
    manifest = {
        "format_version": FORMAT_VERSION,
        "algorithm": algorithm,
        "iteration": iteration,
        "tensors": f"{stem}.safetensors",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "dtypes": {k: str(v.dtype) for k, v in tensors.items()},
        "meta": meta,
    }
    path = directory / f"{stem}.json"
    atomic_write(path, (json.dumps(manifest, indent=2) + "\n").encode())
    for old in sorted(directory.glob("ckpt_*.json"))[:-KEEP]:
        old.unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    return path


def latest(directory: Path) -> Path | None:
    """The newest manifest in `directory`, or None."""
    found = sorted(directory.glob("ckpt_*.json"))
    return found[-1] if found else None


def load(manifest_path: Path, algorithm: str, shapes: dict[str, tuple[int, ...]] | None = None
         ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Tensors and manifest of a checkpoint, verified against `algorithm` and `shapes`."""
    def bad(problem: str, accepted: str | None = None) -> InputError:
        return InputError("checkpoint", f"{manifest_path}: {problem}", accepted)

    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad(f"unreadable manifest ({exc.__class__.__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise bad("not an esrl checkpoint manifest", f"format_version {FORMAT_VERSION}")
    if manifest.get("algorithm") != algorithm:
        raise bad(f"checkpoint of algorithm {manifest.get('algorithm')!r}", f"a checkpoint of {algorithm!r}")
    tensor_path = manifest_path.parent / str(manifest.get("tensors", ""))
    try:
        blob = tensor_path.read_bytes()
    except OSError as exc:
        raise bad(f"cannot read tensors ({exc.strerror})") from None
    if hashlib.sha256(blob).hexdigest() != manifest.get("sha256"):
        raise bad("tensor file does not match its SHA-256 (corrupt or altered)")
    try:
        tensors = st_load(blob)
    except Exception as exc:  # safetensors raises its own error types
        raise bad(f"corrupt tensor file ({exc})") from None
    for name, shape in (shapes or {}).items():
        if name not in tensors or tuple(tensors[name].shape) != tuple(shape):
            got = None if name not in tensors else tuple(tensors[name].shape)
            raise bad(f"tensor {name!r} has shape {got}", f"shape {tuple(shape)} for this config")
    return tensors, manifest
