"""Shared fixtures: tiny ES configs that run in a fraction of a second."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from esrl.config import ESConfig, RunConfig

# Without a GPU, Triton kernels (esrl.es.fused) run in Triton's interpreter; it must be chosen before
# anything imports triton, since triton.language's own functions are built at import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def tiny_es(**kw: Any) -> ESConfig:
    return dataclasses.replace(ESConfig(population=16, hidden=(8,), noise_table_size=1 << 16), **kw)


def tiny_run(run_dir: Path, **kw: Any) -> RunConfig:
    base = RunConfig(env="CartPole-v1", seed=3, backend="serial", max_iterations=6, max_seconds=0,
                     target_return=1e9, eval_episodes=2, checkpoint_every=2, run_dir=str(run_dir))
    return dataclasses.replace(base, **kw)


def final_state(run_dir: Path) -> dict[str, np.ndarray]:
    """Tensors of the newest checkpoint in a run directory."""
    manifests = sorted((run_dir / "checkpoints").glob("ckpt_*.json"))
    manifest = json.loads(manifests[-1].read_text())
    return load_file(str(run_dir / "checkpoints" / manifest["tensors"]))


def det_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The timing-free fields of every metrics line."""
    from esrl.train import DETERMINISTIC_KEYS

    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: m[k] for k in DETERMINISTIC_KEYS} for m in lines]


@pytest.fixture
def es_cfg() -> ESConfig:
    return tiny_es()


@pytest.fixture(scope="session")
def _ray_session() -> Any:
    """Whether this session started the local Ray below; it is shut down once, at the end."""
    state = {"started": False}
    yield state
    if state["started"]:
        import ray

        if ray.is_initialized():
            ray.shutdown()


@pytest.fixture(scope="module")
def local_ray(_ray_session: dict[str, bool]) -> Any:
    """One local Ray (about 3 s to start here) shared by the test modules that use it; started again only
    if a module in between shut it down (the cluster tests run their own)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        from esrl.backends.ray_backend import init

        init(None, num_cpus=4)  # esrl's own path: the loopback-only local instance a run starts
        _ray_session["started"] = True
    return ray
