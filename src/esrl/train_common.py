"""What the ES loop (`esrl.train`) and the RL loop (`esrl.train_rl`) share besides the measurement protocol
(`esrl.protocol`): the device a run resolves to, the default run directory and the config.json record."""

from __future__ import annotations

from typing import Any

from esrl import __version__
from esrl.config import RunConfig, to_dict
from esrl.runs.rundir import RunDir


def resolve_device(name: str) -> str:
    """`auto`: CUDA where torch sees a GPU, else the CPU; any other name is kept."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_run_dir(algo: str, run: RunConfig) -> str:
    return f"runs/{algo}-{run.env}-s{run.seed}"


def write_config(rd: RunDir, algo: str, run: RunConfig, cfg: Any, resolved: dict[str, Any]) -> None:
    """config.json: the algorithm, the esrl version, both configs as resolved and what the run decided."""
    rd.write_json("config.json", {"algorithm": algo, "esrl_version": __version__, "run": to_dict(run),
                                  algo: to_dict(cfg), "resolved": resolved})
