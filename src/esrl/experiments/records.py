"""The runs of a sweep as found on disk: one record per (arm, workers, seed) of its grid.

Runs written before a summary field existed are read with that field missing: every
accessor here says what it falls back to. A run counts as solved only when its solve was
confirmed (the parameters that first reached the target reached it again on fresh episodes).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esrl.experiments.sweep import parse_arm, run_name

# where a summary has no `transport` (runs written before it existed), what the backend and sync imply
_INFERRED = {"serial": "in-process", "ray": "ray", "vectorized": "in-process"}


@dataclass
class RunRecord:
    """One run of the grid, as found on disk."""

    name: str
    arm: str
    workers: int
    seed: int
    status: str = "ok"  # ok | missing | unfinished | corrupt: <why>
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def algo(self) -> str:
        return parse_arm(self.arm)[0]

    @property
    def solved_eval(self) -> bool:
        """An evaluation reached the target (not yet confirmed)."""
        return self.status == "ok" and bool(self.summary.get("solved"))

    @property
    def confirmed(self) -> bool:
        """The solve held on fresh episodes: the only kind of solve the report counts."""
        return self.solved_eval and self.summary.get("confirmed") is True

    @property
    def solved(self) -> bool:
        return self.confirmed

    @property
    def ttt(self) -> float:
        """Time-to-threshold of a confirmed solve, +inf otherwise."""
        t = self.summary.get("time_to_threshold_s")
        return float(t) if self.confirmed and t is not None else math.inf

    @property
    def env_steps(self) -> int:
        """Training env steps of the whole run (evaluation apart where the run counted it apart)."""
        v = self.summary.get("env_steps")
        if v is None and self.metrics:
            v = self.metrics[-1].get("env_steps")
        return int(v or 0)

    def steps_to_threshold(self, target: float | None) -> int:
        """Env steps at the first evaluation at or above the target (the run's steps when that is not found)."""
        if self.summary.get("env_steps_to_threshold") is not None:
            return int(self.summary["env_steps_to_threshold"])
        if target is not None:
            for m in self.metrics:
                r = m.get("eval_return")
                if r is not None and r >= target and m.get("env_steps") is not None:
                    return int(m["env_steps"])
        return self.env_steps

    def bytes_running(self) -> float:
        """Bytes moved while training, start-up apart where the summary separates it."""
        total, startup = self.summary.get("bytes_total"), self.summary.get("bytes_startup")
        if total is not None:
            return max(0.0, float(total) - float(startup or 0))
        return float(sum(m.get("bytes_sent_total", 0) + m.get("bytes_received_total", 0) for m in self.metrics))

    def bytes_per_env_step(self) -> float:
        v = self.summary.get("bytes_per_env_step")
        return float(v) if v is not None else self.bytes_running() / max(1, self.env_steps)

    def bytes_to_threshold(self, target: float | None) -> float | None:
        """Bytes a confirmed solve moved to reach the target, start-up included; None when not solved."""
        if not self.confirmed:
            return None
        if self.summary.get("bytes_total") is not None and self.summary.get("stop_reason") in ("solved", None):
            return float(self.summary["bytes_total"])
        startup = float(self.summary.get("bytes_startup") or 0)  # as a run that stopped at its solve counts it
        return startup + self.bytes_per_env_step() * self.steps_to_threshold(target)

    def episodes_to_threshold(self) -> int:
        v = self.summary.get("episodes_to_threshold")
        return int(v if v is not None else self.summary.get("episodes") or 0)

    def eval_episodes_per_iteration(self) -> float | None:
        """Evaluation episodes per metrics line, where the summary counts them apart."""
        n, iters = self.summary.get("eval_episodes"), self.summary.get("iterations") or len(self.metrics)
        return None if n is None or not iters else float(n) / float(iters)

    @property
    def transport(self) -> str:
        t = self.summary.get("transport")
        if t:
            return str(t)
        backend = self.summary.get("backend") or self.config.get("run", {}).get("backend")
        if backend in _INFERRED:
            return _INFERRED[backend] + " (inferred)"
        if backend == "processes":
            sync = self.sync
            return ("shared-memory" if sync in ("lock", "hogwild") else "pipe") + " (inferred)"
        return "unknown"

    @property
    def sync(self) -> str | None:
        s = self.summary.get("sync") or self.config.get("resolved", {}).get("sync")
        if s is None and self.algo != "es":
            s = self.config.get(self.algo, {}).get("sync")
        return None if s is None else str(s)

    @property
    def num_params(self) -> int | None:
        n = self.summary.get("num_params") or self.config.get("resolved", {}).get("num_params")
        return None if n is None else int(n)


def load(sweep_dir: str | Path) -> tuple[dict[str, Any], list[RunRecord]]:
    """The sweep spec and one record per run of its grid."""
    d = Path(sweep_dir)
    try:
        spec = json.loads((d / "sweep.json").read_text())
        arms, workers, seeds = list(spec["algos"]), list(spec["workers"]), int(spec["seeds"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        from esrl.errors import InputError

        raise InputError("sweep_dir", f"{d} has no readable sweep.json ({exc.__class__.__name__})") from None
    records = []
    for s in range(seeds):
        for a in arms:
            for w in workers:
                rec = RunRecord(run_name(a, w, s), a, w, s)
                rd = d / rec.name
                if not rd.is_dir():
                    rec.status = "missing"
                elif not (rd / "summary.json").is_file():
                    rec.status = "unfinished"
                else:
                    try:
                        rec.summary = json.loads((rd / "summary.json").read_text())
                        rec.metrics = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines() if x]
                        if not isinstance(rec.summary, dict):
                            raise json.JSONDecodeError("not an object", "", 0)
                    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                        rec.status = f"corrupt: {exc.__class__.__name__}"
                        rec.summary, rec.metrics = {}, []
                    else:
                        if rec.summary.get("stop_reason") == "interrupted":
                            rec.status = "unfinished"
                    try:
                        cfg = json.loads((rd / "config.json").read_text())
                        rec.config = cfg if isinstance(cfg, dict) else {}
                    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                        pass
                records.append(rec)
    return spec, records


def target_of(spec: dict[str, Any], records: list[RunRecord]) -> float | None:
    """The sweep's target; for sweeps written before it was resolved, the one their runs resolved."""
    if spec.get("target_return") is not None:
        return float(spec["target_return"])
    for r in records:
        t = r.summary.get("target_return", r.config.get("resolved", {}).get("target_return"))
        if t is not None:
            return float(t)
    return None
