"""Checkpoints: corrupt, foreign or mismatched ones are refused; a planted pickle never runs."""

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from esrl.errors import InputError
from esrl.runs import checkpoint

FAST = ["--population", "16", "--hidden", "8", "--max-iterations", "2", "--max-seconds", "0", "--eval-episodes",
        "1", "--noise-table-size", "65536", "--backend", "serial", "--quiet"]


def esrl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "esrl.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def run(tmp_path) -> Path:
    d = tmp_path / "run"
    assert esrl("train", "es", *FAST, "--run-dir", str(d)).returncode == 0
    return d


def _snapshot(d: Path) -> dict:
    return {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}


def _resume_fails(run: Path, field: str = "checkpoint") -> None:
    before = _snapshot(run)
    res = esrl("train", "--resume", str(run), "--max-iterations", "4")
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().startswith(f"esrl: error: {field}:") and len(res.stderr.strip().splitlines()) == 1
    assert _snapshot(run) == before  # nothing on disk changed


def _latest(run: Path) -> tuple[Path, dict]:
    path = checkpoint.latest(run / "checkpoints")
    assert path is not None
    return path, json.loads(path.read_text())


def test_corrupt_tensor_file(run):
    path, manifest = _latest(run)
    tensors = path.parent / manifest["tensors"]
    tensors.write_bytes(tensors.read_bytes()[:-7] + b"garbage")
    _resume_fails(run)


def test_corrupt_manifest(run):
    path, _ = _latest(run)
    path.write_text("{not json")
    _resume_fails(run)


def test_foreign_checkpoint(run):
    path, manifest = _latest(run)
    manifest["algorithm"] = "dqn"
    path.write_text(json.dumps(manifest))
    _resume_fails(run)


def test_checkpoint_of_another_shape(run, tmp_path):
    other = tmp_path / "other"
    assert esrl("train", "es", *FAST, "--hidden", "4", "--run-dir", str(other)).returncode == 0
    for p in (run / "checkpoints").iterdir():
        p.unlink()
    for p in (other / "checkpoints").iterdir():
        shutil.copy(p, run / "checkpoints" / p.name)
    _resume_fails(run)


def test_planted_pickle_payload_never_runs(run, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path, manifest = _latest(run)
    blob = pickle.dumps({"theta": Payload()})
    (path.parent / manifest["tensors"]).write_bytes(blob)
    import hashlib

    manifest["sha256"] = hashlib.sha256(blob).hexdigest()  # a forger can match the hash; the format still refuses
    path.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="corrupt tensor file"):
        checkpoint.load(path, "es")
    _resume_fails(run)
    assert not marker.exists()


def test_non_finite_tensors_are_never_written(tmp_path):
    with pytest.raises(FloatingPointError):
        checkpoint.save(tmp_path, "es", 1, {"theta": np.array([1.0, np.nan], np.float32)}, {})
    assert not list(tmp_path.glob("*"))


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for i in range(6):
        checkpoint.save(tmp_path, "es", i, {"theta": np.full(3, i, np.float32)}, {"i": i})
    assert len(list(tmp_path.glob("*.json"))) == checkpoint.KEEP
    tensors, manifest = checkpoint.load(checkpoint.latest(tmp_path), "es", {"theta": (3,)})
    assert manifest["meta"] == {"i": 5} and tensors["theta"][0] == 5
