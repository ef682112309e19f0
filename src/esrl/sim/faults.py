"""Seeded worker behaviour: compute speed, stragglers and failures, drawn per worker slot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from esrl import seeding


@dataclass(frozen=True)
class WorkerModel:
    """How fast simulated workers compute, how often they straggle or die, how soon they come back."""

    seed: int
    speed: float = 1.0
    straggler_prob: float = 0.0
    straggler_slowdown: float = 1.0
    failure_prob: float = 0.0
    restart_s: float = 0.0

    @classmethod
    def of(cls, run: Any) -> WorkerModel:
        return cls(run.seed, run.worker_speed, run.straggler_prob, run.straggler_slowdown, run.failure_prob,
                   run.restart_s)

    def draws(self, slot: int) -> WorkerDraws:
        return WorkerDraws(self, slot)


class WorkerDraws:
    """The draws of one worker slot (a replacement continues its slot's streams)."""

    def __init__(self, model: WorkerModel, slot: int) -> None:
        self.model = model
        self._straggle = seeding.rng(model.seed, "sim_straggler", slot)
        self._fail = seeding.rng(model.seed, "sim_failure", slot)

    def duration(self, base_s: float) -> tuple[float, float | None]:
        """(seconds a piece of work of `base_s` takes here, seconds into it when the worker dies, or None)."""
        m = self.model
        s = base_s / m.speed
        if m.straggler_prob > 0 and self._straggle.random() < m.straggler_prob:
            s *= m.straggler_slowdown
        if m.failure_prob > 0 and self._fail.random() < m.failure_prob:
            return s, s * float(self._fail.random())
        return s, None
