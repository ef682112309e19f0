"""The running observation statistics, now shared with RL: `esrl.obstat` (kept importable here)."""

from esrl.obstat import _EPS, ObsStat

__all__ = ["_EPS", "ObsStat"]
