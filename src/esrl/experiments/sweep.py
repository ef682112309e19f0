"""`esrl sweep`: every (arm, workers, seed) combination becomes a run directory.

An *arm* is an algorithm with, for the parallel-RL algorithms, how its workers share the
model: `es`, `a3c`, `dqn:lock`, `dqn:hogwild`, `a3c:param-server`. The arm is the unit
the report compares. A sweep that is killed and started again skips runs that finished
(their `summary.json` exists) and re-runs the rest from scratch. `sweep.json` records what
the sweep asked for, with the target return resolved; `machine.json` records, per start of
the sweep, the machine, library versions and commit it ran on.
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

from esrl import config, zoo
from esrl.errors import InputError
from esrl.runs.rundir import atomic_write

BACKENDS = ("serial", "processes", "ray", "vectorized", "simulated")


def _sync_choices(algo: str) -> tuple[str, ...]:
    f = {x.name: x for x in dataclasses.fields(config.ALGORITHMS[algo])}.get("sync")
    return tuple(f.metadata.get("choices") or ()) if f is not None else ()


def arms_accepted() -> str:
    parts = []
    for a in config.ALGORITHMS:
        syncs = _sync_choices(a)
        parts.append(f"{a}[:{'|'.join(syncs)}]" if syncs else a)
    return ", ".join(parts)


def parse_arm(arm: str) -> tuple[str, str | None]:
    """`dqn:lock` -> ("dqn", "lock"); `es` -> ("es", None). A bad arm is an InputError naming `algos`."""
    if not isinstance(arm, str) or not arm.strip():
        raise InputError("algos", f"expected an arm name such as es or dqn:lock, got {arm!r}", arms_accepted())
    algo, sep, sync = arm.strip().partition(":")
    if algo not in config.ALGORITHMS:
        raise InputError("algos", f"unknown algorithm {algo!r} in {arm!r}", arms_accepted())
    if not sep:
        return algo, None
    syncs = _sync_choices(algo)
    if not syncs:
        raise InputError("algos", f"{algo} takes no sync mode ({arm!r}): its workers exchange scalars", algo)
    # the field lists the choices; validate() knows which an algorithm refuses (Dyna-Q has no device arrangement)
    try:
        config.build(config.ALGORITHMS[algo], {"sync": sync}).validate()
    except InputError as exc:
        if exc.field == "sync":
            raise InputError("algos", f"unknown sync {sync!r} in {arm!r}", exc.accepted or ", ".join(syncs)) from None
        raise
    return algo, sync


def arm_dir_name(arm: str) -> str:
    """A filesystem-safe form of an arm: `dqn:param-server` -> `dqn-param-server`."""
    return arm.replace(":", "-")


def run_name(arm: str, workers: int, seed: int) -> str:
    return f"{arm_dir_name(arm)}-w{workers}-s{seed}"


@dataclass
class SweepSpec:
    """What a sweep runs: the grid and the settings shared by its runs."""

    algos: list[str]  # arms: algo or algo:sync
    env: str = "CartPole-v1"
    workers: list[int] = field(default_factory=lambda: [1, 2])
    seeds: int = 3
    backend: str = "processes"
    address: str = ""  # ray: the cluster to join
    device: str = "auto"  # vectorized backend and the RL device arrangements
    target_return: float | None = None  # resolved from the env's reward_threshold when not given
    max_seconds: float = 60.0
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # per algorithm or per arm: config overrides
    preset: str = "auto"  # auto: each arm's zoo preset for the env (configs/zoo/) under `settings`; none: defaults
    sim: dict[str, Any] = field(default_factory=dict)  # simulated backend: network and worker settings (RunConfig's)
    # ES arms: population max(the arm's, this x workers), the paper's scaling (each worker evaluates its own
    # perturbations); 0: the arm's population at every worker count
    population_per_worker: int = 0

    def validate(self) -> None:
        """Everything that can be checked before the first run starts: types, arms, the env, every combination."""
        from esrl import envs

        if not isinstance(self.algos, list) or not self.algos:
            raise InputError("algos", f"expected a non-empty list of arms, got {self.algos!r}", arms_accepted())
        for a in self.algos:
            parse_arm(a)
        if len(set(self.algos)) != len(self.algos):
            raise InputError("algos", f"an arm is listed twice: {self.algos}")
        if not isinstance(self.workers, list) or not all(isinstance(w, int) for w in self.workers):
            raise InputError("workers", f"expected a list of integers, got {self.workers!r}")
        if not self.workers or any(w < 1 for w in self.workers):
            raise InputError("workers", f"need positive worker counts, got {self.workers}")
        if len(set(self.workers)) != len(self.workers):
            raise InputError("workers", f"a worker count is listed twice: {self.workers}")
        if not isinstance(self.seeds, int) or self.seeds < 1:
            raise InputError("seeds", f"must be an integer >= 1, got {self.seeds!r}")
        if self.backend not in BACKENDS:
            raise InputError("backend", f"unknown backend {self.backend!r}", ", ".join(BACKENDS))
        if not isinstance(self.sim, dict) or any(k not in config.SIMULATED_FIELDS for k in self.sim):
            raise InputError("sim", f"expected simulated-backend settings, got {self.sim!r}",
                             ", ".join(config.SIMULATED_FIELDS))
        if isinstance(self.population_per_worker, bool) or not isinstance(self.population_per_worker, int) \
                or self.population_per_worker < 0 or self.population_per_worker % 2:
            raise InputError("population_per_worker", f"expected an even integer >= 0, got {self.population_per_worker!r}",
                             "0 (a fixed population), or 2 (one mirrored pair per worker), 4, ...")
        if self.preset not in ("auto", "none"):
            raise InputError("preset", f"unknown {self.preset!r}", "auto, none")
        if not isinstance(self.settings, dict) or not all(isinstance(v, dict) for v in self.settings.values()):
            raise InputError("settings", f"expected a mapping of algorithm or arm: settings, got {self.settings!r}")
        keys = set(self.algos) | {parse_arm(a)[0] for a in self.algos}
        for k in self.settings:
            if k not in keys:
                raise InputError("settings", f"settings for {k!r}, which the sweep does not run", ", ".join(sorted(keys)))
        if self.target_return is not None and (isinstance(self.target_return, bool)
                                               or not isinstance(self.target_return, int | float)):
            raise InputError("target_return", f"expected a number, got {self.target_return!r}")
        if isinstance(self.max_seconds, bool) or not isinstance(self.max_seconds, int | float):
            raise InputError("max_seconds", f"expected a number, got {self.max_seconds!r}")
        spec = envs.spec_of(self.env)
        for w in self.workers:
            self.run_config(w, 0, Path(".")).validate()
        for a in self.algos:
            for w in self.workers:
                cfg = self.arm_config(a, w)
                cfg.validate()
                config.check_combination(parse_arm(a)[0], self.run_config(w, 0, Path(".")), cfg, spec.obs_onehot,
                                         spec)

    def resolve_target(self) -> None:
        """Fill in the env's reward_threshold when no target was given; refuse an env that has none."""
        if self.target_return is not None:
            self.target_return = float(self.target_return)
            return
        from esrl import train

        run = self.run_config(self.workers[0], 0, Path("."))
        self.target_return = train.resolve_target(run, run.env_spec())
        if self.target_return is None:
            raise InputError("target_return", f"{self.env} has no reward_threshold; a sweep measures time to a target",
                             "--target-return R")

    def arm_config(self, arm: str, workers: int = 1) -> Any:
        """The algorithm config of an arm at a worker count: settings keyed by its algorithm, then by the arm, then
        the arm's sync; an ES arm's population grows with `workers` under `population_per_worker`."""
        algo, sync = parse_arm(arm)
        preset = zoo.algo_preset(algo, self.env)[0] if self.preset == "auto" else {}
        values = {**preset, **self.settings.get(algo, {}), **self.settings.get(arm, {})}
        if sync is not None:
            if "sync" in values and values["sync"] != sync:
                raise InputError("settings", f"sync {values['sync']!r} contradicts the arm {arm!r}",
                                 "no sync in settings for an arm that names one")
            values["sync"] = sync
        cfg = config.build(config.ALGORITHMS[algo], values)
        if algo == "es" and self.population_per_worker:
            cfg = dataclasses.replace(cfg, population=max(cfg.population, self.population_per_worker * workers))
        return cfg

    def arm_preset(self, arm: str) -> str:
        """The zoo file an arm's settings come from: its preset, else the env's measurement settings, else none."""
        return zoo.recorded(zoo.algo_preset(parse_arm(arm)[0], self.env)[1], zoo.env_settings(self.env))

    def run_config(self, workers: int, seed: int, run_dir: Path) -> config.RunConfig:
        # the env's measurement settings from the zoo: the same schedule for every arm
        measurement = zoo.env_settings(self.env) if self.preset == "auto" else {}
        if self.target_return is not None:
            measurement["target_return"] = self.target_return
        try:
            return config.RunConfig(env=self.env, seed=seed, backend=self.backend, address=self.address,
                                    device=self.device, workers=workers, max_seconds=float(self.max_seconds),
                                    run_dir=str(run_dir), preset=self.preset, **measurement, **self.sim)
        except (TypeError, ValueError) as exc:
            raise InputError("sweep", f"bad setting: {exc}") from None

    def runs(self) -> list[tuple[str, int, int]]:
        return [(a, w, s) for s in range(self.seeds) for a in self.algos for w in self.workers]


def finished(run_dir: Path) -> bool:
    """A run is finished when its summary exists and it was not interrupted."""
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("stop_reason") != "interrupted"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def _same_sweep(before: Any, wanted: dict[str, Any]) -> bool:
    """Whether sweep.json on disk asked for this sweep (fields added since it was written take their defaults)."""
    if not isinstance(before, dict):
        return False
    defaults = {f.name: f.default for f in dataclasses.fields(SweepSpec) if f.default is not dataclasses.MISSING}
    for k, v in wanted.items():
        old = before.get(k, defaults.get(k))
        if k == "target_return" and old is None:
            continue  # written before the target was resolved: its runs resolved the same env threshold
        if old != v:
            return False
    return True


def _record_machine(out: Path) -> None:
    from esrl.experiments.machine import gather

    path = out / "machine.json"
    try:
        sessions = json.loads(path.read_text()).get("sessions", [])
    except (OSError, json.JSONDecodeError, AttributeError):
        sessions = []
    sessions.append({**gather(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    atomic_write(path, (json.dumps({"sessions": sessions}, indent=2) + "\n").encode())


def sweep(spec: SweepSpec, out: str | Path, show_progress: bool = True) -> list[dict[str, Any]]:
    """Run (or finish) the sweep into `out`; returns one record per run."""
    spec.validate()
    spec.resolve_target()
    out = Path(out)
    wanted = json.loads(json.dumps(dataclasses.asdict(spec)))
    if (out / "sweep.json").is_file():
        try:
            before = json.loads((out / "sweep.json").read_text())
        except json.JSONDecodeError:
            before = None
        if not _same_sweep(before, wanted):
            raise InputError("out", f"{out} holds a sweep with other settings; finished runs would mix in",
                             "the same settings to continue it, or another --out")
    elif out.exists() and any(out.iterdir()):
        raise InputError("out", f"{out} is not empty and holds no sweep", "a new or empty directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError("out", f"cannot create {out}: {exc.strerror}") from None
    atomic_write(out / "sweep.json", (json.dumps(wanted, indent=2) + "\n").encode())
    _record_machine(out)
    if spec.backend == "vectorized":  # imports happen before any clock starts, as in `esrl train`
        import esrl.es.vectorized  # noqa: F401
    grid = spec.runs()
    records = []
    t0 = time.perf_counter()
    for k, (arm, workers, seed) in enumerate(grid):
        d = out / run_name(arm, workers, seed)
        done = finished(d)
        if show_progress:
            print(f"sweep: {k} done, 1 running, {len(grid) - k - 1} left | {d.name}"
                  f"{' (finished earlier, skipped)' if done else ''} | {time.perf_counter() - t0:.0f}s",
                  file=sys.stderr, flush=True)
        if done:
            records.append({"run": d.name, "arm": arm, "skipped": True})
            continue
        if d.exists():
            shutil.rmtree(d)  # an unfinished run of an earlier, killed sweep: start it again
        algo = parse_arm(arm)[0]
        run = spec.run_config(workers, seed, d)
        cfg = spec.arm_config(arm, workers)
        if spec.preset == "auto":  # config.json records the file the arm's settings came from
            run = dataclasses.replace(run, preset=spec.arm_preset(arm))
        if spec.backend == "simulated" and "sim_costs" not in spec.sim:
            # one cost model per arm: the arm's first run calibrates it, every later run reads it, so the speedup
            # across worker counts and seeds holds no calibration noise
            first = out / run_name(arm, spec.workers[0], 0) / "config.json"
            if d != first.parent and first.is_file():
                run = dataclasses.replace(run, sim_costs=str(first))
        try:
            if algo == "es":
                from esrl.train import train

                summary = train(run, cfg, show_progress=False)
            else:
                from esrl.train_rl import train_rl

                summary = train_rl(algo, run, cfg, show_progress=False)
        except InputError as exc:  # one failed run (say, a NaN) is recorded; the sweep goes on
            records.append({"run": d.name, "arm": arm, "skipped": False, "error": str(exc)})
            continue
        except KeyboardInterrupt:
            if show_progress:
                print(f"sweep: interrupted during {d.name}; run the same command again to finish", file=sys.stderr)
            raise
        records.append({"run": d.name, "arm": arm, "skipped": False, "solved": summary.get("solved"),
                        "confirmed": summary.get("confirmed"),
                        "time_to_threshold_s": summary.get("time_to_threshold_s")})
    if show_progress:
        print(f"sweep: {len(grid)} done, 0 running, 0 left | {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return records
