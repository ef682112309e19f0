"""The cost model: seconds per unit of work, measured once at the start of a run, then fixed.

A simulated run takes every duration from here, so the same model, config and seed give the
same run. The model is written to config.json (`resolved.cost_model`); `--sim-costs FILE`
reads one back instead of calibrating (tests inject fixed costs that way), which repeats a
run bit for bit on another machine. Message sizes are not in the model: they are the exact
bytes the real backends send, computed per message.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from esrl.errors import InputError


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Seconds per unit of work on this machine (one core, one worker)."""

    env_step_s: float = 0.0  # one step of the run's env, the lean Gymnasium loop
    task_s: float = 0.0  # ES: a task's fixed cost (its seeds, masks and normalizer, whatever its size)
    member_s: float = 0.0  # ES: one member's fixed cost in a task (its parameter row, its env's reset)
    row_step_s: float = 0.0  # ES: one member's env step inside a task (its env step, its row of the forward)
    call_s: float = 0.0  # one batched policy forward (ES: per step of a task; RL: over a worker's envs)
    update_s: float = 0.0  # RL: one update's gradient beside acting (loss forward, backward, clipping)
    apply_s: float = 0.0  # one update applied to the whole parameter vector (ES: a replica's apply)
    copy_s: float = 0.0  # RL shared memory: one copy of the whole parameter vector
    byte_s: float = 0.0  # (de)serialising one byte, one side
    message_s: dict[str, float] = dataclasses.field(default_factory=dict)  # fixed part per message kind, one side
    source: str = "calibrated"  # or the file it was read from

    def message(self, kind: str, nbytes: int) -> float:
        """One side's cost of (de)serialising a message of `kind` that is `nbytes` long."""
        return self.message_s.get(kind, 0.0) + nbytes * self.byte_s

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> CostModel:
        names = {f.name for f in dataclasses.fields(cls)} - {"source"}
        unknown = sorted(set(d) - names - {"source"})
        if unknown:
            raise InputError("sim_costs", f"{source}: unknown cost {unknown[0]!r}", ", ".join(sorted(names)))
        values: dict[str, Any] = {}
        for name in names - {"message_s"}:
            v = d.get(name, 0.0)
            if not isinstance(v, int | float) or v < 0 or v != v:
                raise InputError("sim_costs", f"{source}: {name} must be a number >= 0, got {v!r}")
            values[name] = float(v)
        msgs = d.get("message_s", {})
        if not isinstance(msgs, dict) or not all(isinstance(v, int | float) and v >= 0 for v in msgs.values()):
            raise InputError("sim_costs", f"{source}: message_s must map message kinds to seconds >= 0")
        return cls(**values, message_s={str(k): float(v) for k, v in msgs.items()}, source=source)


def load(path: str) -> CostModel:
    """A cost model from a JSON file: a bare model, or a run's config.json (its `resolved.cost_model`)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise InputError("sim_costs", f"cannot read {path}: {exc.strerror}", "a JSON file") from None
    except json.JSONDecodeError as exc:
        raise InputError("sim_costs", f"{path} is not JSON: {exc.msg} (line {exc.lineno})", "a JSON file") from None
    if isinstance(data, dict) and isinstance(data.get("resolved"), dict) and "cost_model" in data["resolved"]:
        data = data["resolved"]["cost_model"]
    if not isinstance(data, dict):
        raise InputError("sim_costs", f"{path} holds no cost model", "a JSON object of costs, or a run's config.json")
    return CostModel.from_dict(data, str(path))


def seconds(fn: Callable[[], Any], repeat: int = 7, budget_s: float = 0.5, fastest: bool = False) -> float:
    """The median wall seconds of `fn()` over up to `repeat` calls (fewer when they take long); with `fastest`, the
    fewest: `fn`'s own cost, with the least of what other processes on a shared machine add to a call."""
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repeat and (len(times) < 2 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[0] if fastest else times[len(times) // 2]


def resolve(run: Any, run_dir: str, resume: bool, measure: Callable[[], CostModel]) -> CostModel:
    """The run's cost model: `--sim-costs`'s file; a resumed run's own (its config.json); else measured now."""
    if run.sim_costs:
        return load(run.sim_costs)
    own = Path(run_dir) / "config.json"
    if resume and own.exists():
        try:
            return load(str(own))
        except InputError:
            pass  # a run that never got as far as its cost model: measure
    return measure()
