"""The virtual clock and the measurement protocol in virtual seconds."""

from __future__ import annotations

from typing import Any

import simpy

from esrl.config import RunConfig
from esrl.protocol import Counters, Measurement, Play


class SimClock:
    """The one SimPy environment of a run: its `now` is the run's clock."""

    def __init__(self) -> None:
        self.env = simpy.Environment()

    def now(self) -> float:
        return float(self.env.now)

    def advance(self, seconds: float) -> None:
        """Let `seconds` of virtual time pass (what is scheduled meanwhile happens)."""
        if seconds > 0:
            self.env.run(until=self.env.now + seconds)


class VirtualMeasurement(Measurement):
    """esrl.protocol's measurement with the simulated clock: evaluations cost what the cost model
    says their env steps cost (`eval_step_s` each), and bookkeeping (saving the best parameters) none."""

    def __init__(self, run: RunConfig, target: float | None, counters: Counters, clock: SimClock,
                 eval_step_s: float) -> None:
        super().__init__(run, target, counters, 0.0)
        self.clock, self.eval_step_s = clock, eval_step_s

    def elapsed(self) -> float:
        if self._stopped is not None:
            return self._stopped
        return self.offset + self.clock.now()

    def evaluate(self, play: Play) -> Any:
        c = self.counters
        steps, eval_s = c.eval_env_steps, c.eval_s
        ev = super().evaluate(play)
        cost = (c.eval_env_steps - steps) * self.eval_step_s
        c.eval_s = eval_s + cost  # not the wall seconds the play took
        self.clock.advance(cost)
        return ev

    def off_clock(self, work: Any) -> None:
        work()
