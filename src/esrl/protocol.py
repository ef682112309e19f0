"""The measurement protocol every training loop follows, ES and RL alike.

One schedule, one clock, one set of counters, one confirmation (docs/architecture.md,
"The measurement protocol"):

- The coordinator evaluates the current policy whenever the training env steps pass the
  next multiple of `eval_every_steps`, on the seeds of evaluation k (k = 0, 1, ...), with
  training paused. Spacing in training env steps, not iterations or updates, gives every
  algorithm and worker count the same number of evaluations per unit of experience.
- Evaluation time is kept off the training clock: `time_to_threshold_s` is the training
  wall time (start-up included) until the state that first reached the target; `eval_s`
  says what the evaluations cost on top. Evaluation steps and episodes are counted apart
  (`eval_env_steps`, `eval_episodes`), never in `env_steps` / `episodes`.
- A solve is confirmed: an evaluation at or above the target is played again at once, off the
  clock, on `confirm_episodes` fresh seeds (confirmation k: its own seeds, the same for every
  algorithm). The run is solved at the first evaluation whose confirmation also reaches the
  target; a hit that fails it is counted (`unconfirmed_hits`) and training goes on. A mean of a
  few noisy episodes crosses the target by chance before the policy does, and a rule that
  stopped there would time luck; `first_hit_s` keeps the training time of the first hit of any
  kind, so both readings stay visible.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from esrl import envs, seeding
from esrl.config import RunConfig

# seeds -> (returns, lengths) of one noiseless episode per seed
Play = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass
class Counters:
    """Run totals that a checkpoint carries across a resume."""

    env_steps: int = 0  # training steps only
    episodes: int = 0  # training episodes only
    elapsed_s: float = 0.0  # wall seconds, evaluations included
    eval_s: float = 0.0  # wall seconds spent evaluating, training paused
    eval_env_steps: int = 0
    eval_episodes: int = 0
    evaluations: int = 0
    next_eval_step: int = 0
    time_to_threshold_s: float | None = None
    env_steps_to_threshold: int | None = None
    episodes_to_threshold: int | None = None
    threshold_return: float | None = None  # the evaluation mean that first reached the target
    best_eval_return: float | None = None
    last_eval_return: float | None = None
    confirmed_return: float | None = None
    confirmations: int = 0  # confirmations played (one per evaluation that reached the target unsolved)
    unconfirmed_hits: int = 0  # evaluations at or above the target whose confirmation fell short
    first_hit_s: float | None = None  # training seconds at the first evaluation at or above the target
    bytes_total: int = 0  # traffic of earlier sessions of a resumed run (this one's is added at the end)
    bytes_startup: int = 0
    messages_total: int = 0

    @classmethod
    def from_checkpoint(cls, manifest: dict[str, Any]) -> Counters:
        """The counters a checkpoint's manifest stored (`Measurement.checkpoint_counters` wrote them)."""
        return cls(**manifest["meta"]["counters"])


def resolve_target(run: RunConfig, spec: envs.EnvSpec) -> float | None:
    """The target return: the run's own, else the env's `reward_threshold` (None when it has none)."""
    if run.target_return is not None:
        return run.target_return
    env = envs.make(spec.env_id)
    try:
        thr = env.spec.reward_threshold if env.spec is not None else None
    finally:
        env.close()
    return None if thr is None else float(thr)


def eval_seeds(seed: int, evaluation: int, episodes: int) -> np.ndarray:
    """Reset seeds of evaluation k: the same for every algorithm, backend and worker count."""
    return seeding.rng(seed, "eval_seeds", evaluation).integers(0, 2**31 - 1, size=episodes)


def confirm_seeds(seed: int, episodes: int, attempt: int = 0) -> np.ndarray:
    """Fresh reset seeds of confirmation `attempt` (streams no evaluation draws from)."""
    return seeding.rng(seed, "confirm_seeds", *((attempt,) if attempt else ())).integers(0, 2**31 - 1, size=episodes)


def play_episodes(spec: envs.EnvSpec, act: Callable[[np.ndarray], np.ndarray], seeds: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of one noiseless episode per seed: whole games, all envs stepped together.

    `act` maps flat float32 observations (B, obs_size) to B env actions; every algorithm's
    evaluation goes through here, so ES and RL episodes are played the same way.
    """
    n = len(seeds)
    env_list = [envs.lean(envs.make_env(envs.whole_episodes(spec))) for _ in range(n)]
    obs = np.stack([np.asarray(e.reset(seed=int(s))[0], np.float32).reshape(-1)
                    for e, s in zip(env_list, seeds, strict=True)])
    returns, lengths = np.zeros(n), np.zeros(n, np.int64)
    active = list(range(n))
    while active:
        actions = act(obs[active])
        still = []
        for j, i in enumerate(active):
            o, r, term, trunc, _ = env_list[i].step(actions[j])
            returns[i] += float(r)
            lengths[i] += 1
            obs[i] = np.asarray(o, np.float32).reshape(-1)
            if not (term or trunc or lengths[i] >= spec.max_episode_steps):
                still.append(i)
        active = still
    for e in env_list:
        e.close()
    return returns, lengths


@dataclasses.dataclass
class Evaluation:
    """One evaluation's outcome."""

    mean: float
    hit: bool  # at or above the target
    first: bool  # the run's solve: the first hit that its confirmation (when there is one) upheld
    best: bool = False  # the highest mean so far: its parameters are kept in RUN/best/


class Measurement:
    """The clock, the evaluation schedule and the counters of one run (see the module docstring)."""

    def __init__(self, run: RunConfig, target: float | None, counters: Counters, t_start: float) -> None:
        self.run, self.target, self.counters = run, target, counters
        self.t_start, self.offset = t_start, counters.elapsed_s
        self._stopped: float | None = None

    def elapsed(self) -> float:
        """Wall seconds of the run so far, across resumes, evaluations included."""
        if self._stopped is not None:
            return self._stopped
        return self.offset + time.perf_counter() - self.t_start

    def stop_clock(self) -> None:
        """End the timed run: what follows (the confirmation) is not counted."""
        self._stopped = self.elapsed()

    def training_s(self) -> float:
        """The training clock: wall seconds less the time spent evaluating."""
        return self.elapsed() - self.counters.eval_s

    @property
    def solved(self) -> bool:
        return self.counters.time_to_threshold_s is not None

    def due(self) -> bool:
        return self.counters.env_steps >= self.counters.next_eval_step

    def evaluate(self, play: Play) -> Evaluation:
        """Play evaluation k of the current policy (training must be paused) and count it apart."""
        c, run = self.counters, self.run
        clock = self.training_s()
        t0 = time.perf_counter()
        returns, lengths = play(eval_seeds(run.seed, c.evaluations, run.eval_episodes))
        c.eval_s += time.perf_counter() - t0
        c.eval_env_steps += int(lengths.sum())
        c.eval_episodes += len(returns)
        c.evaluations += 1
        c.next_eval_step = (c.env_steps // run.eval_every_steps + 1) * run.eval_every_steps
        mean = float(np.mean(returns))
        c.last_eval_return = mean
        best = math.isfinite(mean) and (c.best_eval_return is None or mean > c.best_eval_return)
        if best:
            c.best_eval_return = mean
        hit = self.target is not None and math.isfinite(mean) and mean >= self.target
        first = hit and not self.solved
        if first:
            if c.first_hit_s is None:
                c.first_hit_s = clock
            first = self._confirm_now(play)
            if first:
                c.time_to_threshold_s = clock
                c.env_steps_to_threshold, c.episodes_to_threshold = c.env_steps, c.episodes
                c.threshold_return = mean
            else:
                c.unconfirmed_hits += 1
        return Evaluation(mean, hit, first, best)

    def _confirm_now(self, play: Play) -> bool:
        """Confirm a hit on fresh seeds, off the clock; True when it holds (or the run confirms nothing)."""
        c, run = self.counters, self.run
        if run.confirm_episodes == 0:
            return True
        t0 = time.perf_counter()
        returns, _ = play(confirm_seeds(run.seed, run.confirm_episodes, c.confirmations))
        c.eval_s += time.perf_counter() - t0
        c.confirmations += 1
        mean = float(np.mean(returns))
        assert self.target is not None
        if math.isfinite(mean) and mean >= self.target:
            c.confirmed_return = mean
            return True
        return False

    def off_clock(self, work: Callable[[], Any]) -> None:
        """Run an evaluation's own bookkeeping (saving the best parameters) and count it as evaluation time:
        it exists only because of the evaluation, so it must not move time-to-threshold."""
        t0 = time.perf_counter()
        work()
        self.counters.eval_s += time.perf_counter() - t0

    def confirm(self, play: Play) -> float | None:
        """Play the threshold parameters on fresh seeds (outside the timed run); their mean return.

        Only a run resumed from a checkpoint of before confirmations were played at the hit needs it."""
        if self.run.confirm_episodes == 0:
            return None
        returns, _ = play(confirm_seeds(self.run.seed, self.run.confirm_episodes))
        self.counters.confirmed_return = float(np.mean(returns))
        return self.counters.confirmed_return

    def checkpoint_counters(self, traffic: Any) -> dict[str, Any]:
        """The counters as a checkpoint stores them: the clock and this session's traffic folded in."""
        return dataclasses.asdict(dataclasses.replace(self.counters, elapsed_s=self.elapsed(),
                                                      **_traffic_totals(self.counters, traffic)))

    def summary(self, traffic: Any, transport: str) -> dict[str, Any]:
        """The measurement fields of summary.json, the same keys for every algorithm."""
        c = self.counters
        totals = _traffic_totals(c, traffic)
        confirmed = None
        if self.solved and c.confirmed_return is not None and self.target is not None:
            confirmed = c.confirmed_return >= self.target
        steady = totals["bytes_total"] - totals["bytes_startup"]
        return {
            "target_return": self.target,
            "solved": self.solved,
            "confirmed": confirmed,
            "confirmed_return": c.confirmed_return,
            "confirm_episodes": self.run.confirm_episodes if self.solved else 0,
            "threshold_return": c.threshold_return,
            "first_hit_s": c.first_hit_s,
            "unconfirmed_hits": c.unconfirmed_hits,
            "time_to_threshold_s": c.time_to_threshold_s,
            "env_steps_to_threshold": c.env_steps_to_threshold,
            "episodes_to_threshold": c.episodes_to_threshold,
            "env_steps": c.env_steps,
            "episodes": c.episodes,
            "eval_env_steps": c.eval_env_steps,
            "eval_episodes": c.eval_episodes,
            "evaluations": c.evaluations,
            "eval_s": c.eval_s,
            "training_s": self.training_s(),
            "wall_s": self.elapsed(),
            "best_eval_return": c.best_eval_return,
            "final_eval_return": c.last_eval_return,  # the newest evaluation's mean
            **totals,
            "bytes_per_env_step": steady / c.env_steps if c.env_steps else None,
            "transport": transport,
        }


def _traffic_totals(c: Counters, traffic: Any) -> dict[str, int]:
    """Earlier sessions' traffic plus this session's (`traffic`: the backend's Traffic since start)."""
    return {
        "bytes_total": c.bytes_total + sum(traffic.sent.values()) + sum(traffic.received.values()),
        "bytes_startup": c.bytes_startup + int(getattr(traffic, "startup", 0)),
        "messages_total": c.messages_total + int(traffic.messages),
    }
