"""esrl: Evolution Strategies vs parallel RL, measured side by side."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from esrl.policy import Policy

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def load(run_dir: str | Path, checkpoint: str | int = "latest") -> Policy:
    """The trained policy of a run directory: `policy.predict(obs)`, `policy.evaluate(episodes)`.

    `checkpoint`: "latest", "best" (highest evaluation mean), "threshold" (the first to reach the
    target) or a checkpoint number. Imported on first use: `import esrl` loads neither torch nor ray.
    """
    from esrl.policy import load as _load

    return _load(run_dir, checkpoint)
