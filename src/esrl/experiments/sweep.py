"""`esrl sweep`: every (algorithm, workers, seed) combination becomes a run directory.

A sweep that is killed and started again skips runs that finished (their `summary.json`
exists) and re-runs the rest from scratch. `sweep.json` records what the sweep asked for.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esrl import config
from esrl.errors import InputError
from esrl.runs.rundir import atomic_write


@dataclass
class SweepSpec:
    """What a sweep runs: the grid and the settings shared by its runs."""

    algos: list[str]
    env: str = "CartPole-v1"
    workers: list[int] = field(default_factory=lambda: [1, 2])
    seeds: int = 3
    backend: str = "processes"
    target_return: float | None = None
    max_seconds: float = 60.0
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # per algorithm: config overrides

    def validate(self) -> None:
        """Everything that can be checked before the first run starts: types, the env, every config."""
        from esrl import envs

        if not isinstance(self.algos, list) or not all(isinstance(a, str) for a in self.algos):
            raise InputError("algos", f"expected a list of names, got {self.algos!r}")
        if not isinstance(self.workers, list) or not all(isinstance(w, int) for w in self.workers):
            raise InputError("workers", f"expected a list of integers, got {self.workers!r}")
        if not isinstance(self.seeds, int):
            raise InputError("seeds", f"expected an integer, got {self.seeds!r}")
        for a in self.algos:
            if a not in config.ALGORITHMS:
                raise InputError("algos", f"unknown algorithm {a!r}", ", ".join(config.ALGORITHMS))
        if not self.workers or any(w < 1 for w in self.workers):
            raise InputError("workers", f"need positive worker counts, got {self.workers}")
        if self.seeds < 1:
            raise InputError("seeds", f"must be >= 1, got {self.seeds}")
        if not isinstance(self.settings, dict):
            raise InputError("settings", f"expected a mapping of algorithm: settings, got {self.settings!r}")
        for a in self.settings:
            if a not in self.algos:
                raise InputError("settings", f"settings for {a!r}, which the sweep does not run", ", ".join(self.algos))
        if self.target_return is not None and not isinstance(self.target_return, int | float):
            raise InputError("target_return", f"expected a number, got {self.target_return!r}")
        if not isinstance(self.max_seconds, int | float):
            raise InputError("max_seconds", f"expected a number, got {self.max_seconds!r}")
        spec = envs.spec_of(self.env)
        for w in self.workers:
            self.run_config(w, 0, Path(".")).validate()
        for a in self.algos:
            cfg = config.build(config.ALGORITHMS[a], self.settings.get(a, {}))
            cfg.validate()
            config.check_combination(a, self.run_config(1, 0, Path(".")), cfg, spec.obs_onehot, spec)

    def run_config(self, workers: int, seed: int, run_dir: Path) -> config.RunConfig:
        try:
            return config.RunConfig(env=self.env, seed=seed, backend=self.backend, workers=workers,
                                    target_return=self.target_return, max_seconds=float(self.max_seconds),
                                    run_dir=str(run_dir))
        except (TypeError, ValueError) as exc:
            raise InputError("sweep", f"bad setting: {exc}") from None

    def runs(self) -> list[tuple[str, int, int]]:
        return [(a, w, s) for s in range(self.seeds) for a in self.algos for w in self.workers]


def run_name(algo: str, workers: int, seed: int) -> str:
    return f"{algo}-w{workers}-s{seed}"


def finished(run_dir: Path) -> bool:
    """A run is finished when its summary exists and it was not interrupted."""
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("stop_reason") != "interrupted"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False




def sweep(spec: SweepSpec, out: str | Path, show_progress: bool = True) -> list[dict[str, Any]]:
    """Run (or finish) the sweep into `out`; returns one record per run."""
    spec.validate()
    out = Path(out)
    wanted = dataclasses.asdict(spec)
    if (out / "sweep.json").is_file():
        try:
            before = json.loads((out / "sweep.json").read_text())
        except json.JSONDecodeError:
            before = None
        if before != json.loads(json.dumps(wanted)):
            raise InputError("out", f"{out} holds a sweep with other settings; finished runs would mix in",
                             "the same settings to continue it, or another --out")
    elif out.exists() and any(out.iterdir()):
        raise InputError("out", f"{out} is not empty and holds no sweep", "a new or empty directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError("out", f"cannot create {out}: {exc.strerror}") from None
    atomic_write(out / "sweep.json", (json.dumps(wanted, indent=2) + "\n").encode())
    grid = spec.runs()
    records = []
    t0 = time.perf_counter()
    for k, (algo, workers, seed) in enumerate(grid):
        d = out / run_name(algo, workers, seed)
        done = finished(d)
        if show_progress:
            print(f"sweep: {k} done, 1 running, {len(grid) - k - 1} left | {d.name}"
                  f"{' (finished earlier, skipped)' if done else ''} | {time.perf_counter() - t0:.0f}s",
                  file=sys.stderr, flush=True)
        if done:
            records.append({"run": d.name, "skipped": True})
            continue
        if d.exists():
            shutil.rmtree(d)  # an unfinished run of an earlier, killed sweep: start it again
        run = spec.run_config(workers, seed, d)
        cfg = config.build(config.ALGORITHMS[algo], spec.settings.get(algo, {}))
        try:
            if algo == "es":
                from esrl.train import train

                summary = train(run, cfg, show_progress=False)
            else:
                from esrl.train_rl import train_rl

                summary = train_rl(algo, run, cfg, show_progress=False)
        except InputError as exc:  # one failed run (say, a NaN) is recorded; the sweep goes on
            records.append({"run": d.name, "skipped": False, "error": str(exc)})
            continue
        except KeyboardInterrupt:
            if show_progress:
                print(f"sweep: interrupted during {d.name}; run the same command again to finish", file=sys.stderr)
            raise
        records.append({"run": d.name, "skipped": False, "solved": summary["solved"],
                        "time_to_threshold_s": summary["time_to_threshold_s"]})
    if show_progress:
        print(f"sweep: {len(grid)} done, 0 running, 0 left | {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return records
