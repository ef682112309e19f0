"""`esrl tune`: Optuna's TPE search over an algorithm's documented ranges (`SPACES`), each trial an ordinary run.

A trial samples the settings of `SPACES[algo]` over the env's zoo preset (configs/zoo/ALGO/ENV.toml, and the
env's measurement settings from envs.toml, so every trial is measured on the same schedule) and trains it in
this process, in OUT/trials/NNNN, with a wall-clock budget of `budget_s` and stop_on_solve.

Score, maximized: a confirmed solve scores 1 + (1 - time_to_threshold_s / budget_s), in (1, 2]; any other run
scores its progress (best evaluation - evaluation 0) / (target - evaluation 0), clipped to [-1, 1], so a
faster solve beats a slower one and every solve beats every run that did not solve (an unconfirmed solve
counts as progress 1 at most). A solve counts as confirmed unless the confirmation failed (confirm_episodes 0
asks for none). With `seeds` K > 1 a trial runs K seeds and scores the median_low of their scores.

Pruning: at each evaluation a trial reports its best progress so far at step = the training-clock bucket
(budget_s / BUCKETS seconds each; run k of a trial adds k * BUCKETS), and stops (state pruned) when the pruner,
a MedianPruner after PRUNER_STARTUP finished trials, says so; never before WARMUP_BUCKETS.

Resumable: the study lives in `storage` (default sqlite:///OUT/study.db); `trials` counts finished trials
(complete, pruned, failed), so a restarted tune continues, and re-runs first a trial that an interrupt or a
kill cut short. OUT/best.toml (the best trial as a zoo preset) is rewritten after every trial that improves;
OUT/trials.jsonl gets one line per trial.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import math
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from esrl import config, seeding, zoo
from esrl.config_cli import parse_ints
from esrl.errors import InputError
from esrl.runs.rundir import atomic_write, dumps
from esrl.tune_space import SPACES, Param, markdown

__all__ = ["SPACES", "Param", "TuneSpec", "markdown", "tune"]


BUCKETS = 20  # pruning steps per run: the training clock in budget_s / BUCKETS buckets
WARMUP_BUCKETS = BUCKETS // 3  # no pruning in a run's first third (the RL Zoo's n_evaluations // 3)
PRUNER_STARTUP = 5  # finished trials before the median means anything
SAMPLER_STARTUP = 10  # random trials before TPE models the scores (Optuna's and the RL Zoo's default)
MEANING = ("score 1 + (1 - time_to_threshold/budget) for a confirmed solve, else progress (best eval - eval 0) / "
           "(target - eval 0) clipped to [-1, 1]")


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass
class TuneSpec:
    """How `esrl tune` searches an algorithm's settings on an env, and how each trial runs."""

    env: str = _f("CartPole-v1", "Gymnasium id; its zoo preset is the base every trial samples over")
    trials: int = _f(20, "finished trials in the study in total: a restarted tune continues to this count")
    budget_s: float = _f(60.0, "wall-clock budget of each run, seconds")
    workers: int = _f(2, "workers of each run (0 = one per CPU core); 2, as the zoo table")
    backend: str = _f("processes", "backend of each run",
                      next(f.metadata["choices"] for f in dataclasses.fields(config.RunConfig) if f.name == "backend"))
    seed: int = _f(0, "the sampler's seed; the trials' run seeds derive from it too")
    seeds: int = _f(1, "runs per trial, on the same seeds for every trial; a trial scores their median_low")
    target_return: float | None = _f(None, "the score's target (default: the env's, from configs/zoo/envs.toml or its "
                                     "reward_threshold)")
    out: str = _f("", "tune directory: tune.json, study.db, trials/NNNN, trials.jsonl, best.toml "
                  "(default: tunes/ALGO-ENV)")
    storage: str = _f("", "Optuna storage URL (default: sqlite:///OUT/study.db)")

    def validate(self) -> None:
        for name, ok in (("trials", self.trials >= 1), ("seeds", self.seeds >= 1), ("seed", self.seed >= 0),
                         ("workers", self.workers >= 0)):
            if not ok:
                raise InputError(name, f"must be >= {0 if name in ('seed', 'workers') else 1}, got "
                                 f"{getattr(self, name)}")
        if not (self.budget_s > 0 and math.isfinite(self.budget_s)):
            raise InputError("budget_s", f"must be > 0, got {self.budget_s}")

    def run_seeds(self) -> list[int]:
        """The run seeds of every trial: the same for all (trials differ only in their settings), and derived
        rather than 0, 1, 2 so that the zoo table's seeds stay out of the tuning."""
        return [seeding.derive_int(self.seed, "tune_run", k) for k in range(self.seeds)]

    def recorded(self, algo: str) -> dict[str, Any]:
        """What tune.json keeps: a restarted tune must score its trials the same way."""
        return {"algo": algo, **{k: v for k, v in dataclasses.asdict(self).items() if k not in ("trials", "out")}}


def progress(best: float | None, eval0: float | None, target: float | None) -> float:
    """(best - eval0) / (target - eval0) clipped to [-1, 1]; -1 without a finite evaluation."""
    if best is None or eval0 is None or target is None or not (math.isfinite(best) and math.isfinite(eval0)):
        return -1.0
    span = target - eval0
    if span <= 0:  # evaluation 0 was already at the target
        return 1.0 if best >= target else -1.0
    return min(1.0, max(-1.0, (best - eval0) / span))


def score(summary: dict[str, Any], eval0: float | None, budget_s: float) -> float:
    """A run's score (module docstring): 1 + (1 - ttt/budget) for a confirmed solve, else its progress."""
    ttt = summary.get("time_to_threshold_s")
    if summary.get("solved") and summary.get("confirmed") is not False and ttt is not None:
        return 1.0 + (1.0 - min(max(ttt, 0.0), budget_s) / budget_s)
    return progress(summary.get("best_eval_return"), eval0, summary.get("target_return"))


def sample(trial: Any, space: tuple[Param, ...]) -> dict[str, Any]:
    """The settings a trial samples: floats rounded to 3 significant digits (what runs is what best.toml says),
    layer sizes as lists."""
    out: dict[str, Any] = {}
    for p in space:
        if p.choices:
            v = trial.suggest_categorical(p.name, list(p.choices))
        elif isinstance(p.low, int) and isinstance(p.high, int):
            v = trial.suggest_int(p.name, p.low, p.high, log=p.log)
        else:
            v = float(f"{trial.suggest_float(p.name, float(p.low or 0), float(p.high or 0), log=p.log):.3g}")
        if p.name.endswith("hidden") and isinstance(v, str):  # "linear": no hidden layer
            v = parse_ints("" if v == "linear" else v)
        out[p.name] = v
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


class _Reporter:
    """The callback of one run: reports the best progress so far per training-clock bucket, asks to prune."""

    def __init__(self, trial: Any, run_index: int, bucket_s: float, target: float) -> None:
        self.trial, self.offset, self.bucket_s, self.target = trial, run_index * BUCKETS, bucket_s, target
        self.eval0: float | None = None
        self.best = -1.0
        self.reported = -1

    def _fill(self, upto: int, value: float) -> None:
        for b in range(self.reported + 1, min(upto, BUCKETS - 1) + 1):
            self.trial.report(value, self.offset + b)
            self.reported = b

    def __call__(self, line: dict[str, Any]) -> bool:
        ev = line.get("eval_return")
        if ev is None:
            return True
        if self.eval0 is None:
            self.eval0 = float(ev)
        bucket = int(float(line.get("training_s") or 0.0) / self.bucket_s)
        self._fill(bucket - 1, self.best)  # buckets this evaluation came after held the best before it
        self.best = max(self.best, progress(float(ev), self.eval0, self.target))
        self._fill(bucket, self.best)
        return not (bucket >= WARMUP_BUCKETS and self.trial.should_prune())

    def finish(self) -> None:
        """A run that ended keeps its progress for the rest of the budget (a solve ends runs early)."""
        self._fill(BUCKETS - 1, self.best)


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise InputError("optuna", "not installed; esrl tune needs it", "pip install optuna") from None
    return optuna


def _git_commit() -> str:
    try:
        res = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return res.stdout.strip() if res.returncode == 0 else "unknown"


def _shown(path: str) -> str:
    """A zoo file as configs/zoo/... when it is one."""
    try:
        return str(Path(path).relative_to(zoo.zoo_dir().parent.parent))
    except ValueError:
        return path


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)  # Python's float repr (1e-05, inf, nan) is valid TOML
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return json.dumps(str(v))  # a TOML basic string


class Tuner:
    """One study on disk (OUT) and the trials it runs; `tune()` drives it."""

    def __init__(self, algo: str, spec: TuneSpec, space: tuple[Param, ...] | None, overrides: dict[str, Any] | None,
                 quiet: bool) -> None:
        if algo not in config.ALGORITHMS:
            raise InputError("algo", f"unknown algorithm {algo!r}", ", ".join(config.ALGORITHMS))
        spec.validate()
        self.algo, self.spec, self.quiet = algo, spec, quiet
        self.space = SPACES[algo] if space is None else space
        if spec.backend == "vectorized":  # it draws start states per batch and refuses shared seeds
            self.space = tuple(p for p in self.space if p.name != "common_seeds")
        self.out = Path(spec.out or f"tunes/{algo}-{zoo.file_name(spec.env)[:-5]}")
        self.algo_cls = config.ALGORITHMS[algo]
        preset_values, self.preset = zoo.resolve(algo, {"env": spec.env}, from_config_file=False)
        self.preset_algo, _ = zoo.algo_preset(algo, spec.env)
        fixed = {"env": spec.env, "backend": spec.backend, "workers": spec.workers, "max_seconds": spec.budget_s,
                 "stop_on_solve": True, **({"target_return": spec.target_return} if spec.target_return is not None
                                           else {})}
        self.base = {**preset_values, **(overrides or {}), **fixed}
        _, self.fixed_algo = config.split_settings(overrides or {}, self.algo_cls)
        run, _ = self.configs(self.base, 0, self.out / "trials" / "check")  # every input checked before OUT changes
        from esrl import protocol

        target = protocol.resolve_target(run, run.env_spec())
        if target is None:
            raise InputError("target_return", f"{spec.env} has no reward_threshold and configs/zoo/envs.toml gives "
                             "no target; a trial is scored against one", "--target-return R")
        self.target = target

    def configs(self, values: dict[str, Any], seed: int, run_dir: Path) -> tuple[config.RunConfig, Any]:
        """A trial run's configs, checked as `esrl train` checks them."""
        run_vals, algo_vals = config.split_settings({**values, "seed": seed, "run_dir": str(run_dir)}, self.algo_cls)
        run = config.build(config.RunConfig, run_vals)
        cfg = config.build(self.algo_cls, algo_vals)
        run.validate()
        cfg.validate()
        spec = run.env_spec()
        checked = cfg if self.algo == "es" else config.resolve_rl(self.algo, run, cfg, spec)
        config.check_combination(self.algo, run, checked, spec.obs_onehot, spec)
        return run, cfg

    # --- OUT: tune.json, the lock, trials.jsonl, best.toml

    def open_out(self) -> None:
        """Create OUT, or check that it holds this very study; nothing on disk is replaced."""
        meta = self.out / "tune.json"
        rec = self.spec.recorded(self.algo)
        if meta.is_file():
            try:
                old = json.loads(meta.read_text())
            except (OSError, ValueError) as exc:
                raise InputError("out", f"cannot read {meta}: {exc}") from None
            if (old.get("algo"), old.get("env")) != (rec["algo"], rec["env"]):
                raise InputError("out", f"{self.out} holds the tune of {old.get('algo')} on {old.get('env')}",
                                 "another --out, or the same algorithm and env to continue it")
            rec["storage"] = rec["storage"] or old.get("storage", "")  # given once, kept
            for k, v in rec.items():
                if old.get(k) != v:  # the scores of a continued study must compare, and its trials be the same
                    raise InputError(k, f"{self.out} was tuned with {k} = {old.get(k)!r}; a continued tune keeps "
                                     "it", "the same value, or another --out")
            self.spec = dataclasses.replace(self.spec, storage=rec["storage"])
        elif self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise InputError("out", f"{self.out} exists and holds no esrl tune (tune.json)", "a new or empty directory")
        try:
            (self.out / "trials").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError("out", f"cannot create {self.out}: {exc.strerror}") from None
        if not meta.is_file():  # storage "" is the default, which moves with OUT
            atomic_write(meta, (json.dumps(self.spec.recorded(self.algo), indent=2) + "\n").encode())
        self.storage = self.spec.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"

    @contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.out / "tune.lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InputError("out", f"another esrl tune is running on {self.out}") from None
            yield

    def record(self, entry: dict[str, Any]) -> None:
        with open(self.out / "trials.jsonl", "a") as f:
            f.write(dumps(entry) + "\n")

    def write_best(self, best: Any, finished: int) -> Path:
        """OUT/best.toml: the best trial's algorithm settings (the preset's, with the sampled ones over them)."""
        s = self.spec
        settings = {**self.preset_algo, **self.fixed_algo, **best.user_attrs["settings"]}
        sampled = ", ".join(p.name for p in self.space)
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines = [f"# esrl tune: {self.algo} on {s.env}: trial {best.number}, best of {finished} finished, score {best.value:.4f}",
                 f"# ({MEANING})",
                 f"# budget {s.budget_s:g} s per run, workers {s.workers or 'all cores'}, backend {s.backend}, run "
                 f"seeds {', '.join(map(str, s.run_seeds()))}; base preset {_shown(self.preset)}",
                 f"# sampled: {sampled}; esrl commit {_git_commit()}, {when}",
                 f"env = {_toml(s.env)}"]
        lines += [f"{k} = {_toml(v)}" for k, v in settings.items()]
        path = self.out / "best.toml"
        atomic_write(path, ("\n".join(lines) + "\n").encode())
        return path

    # --- one trial

    def run_trial(self, trial: Any) -> dict[str, Any]:
        """Sample, train `seeds` runs, score; the trial's line for trials.jsonl (the study is told by the caller)."""
        settings = sample(trial, self.space)
        if self.algo == "es" and self.base.get("mirrored", True) and settings.get("population", 0) % 2:
            settings["population"] += 1  # mirrored pairs: the population stays even
        trial.set_user_attr("settings", settings)
        runs: list[dict[str, Any]] = []
        entry: dict[str, Any] = {"trial": trial.number, "params": settings, "runs": runs}
        for k, seed in enumerate(self.spec.run_seeds()):
            name = f"{trial.number:04d}" if self.spec.seeds == 1 else f"{trial.number:04d}-{k}"
            run_dir = self.out / "trials" / name
            try:
                run, cfg = self.configs({**self.base, **settings}, seed, run_dir)
            except InputError as exc:  # a sampled combination the config refuses: the trial fails, the tune goes on
                return {**entry, "state": "fail", "error": str(exc)}
            reporter = _Reporter(trial, k, self.spec.budget_s / BUCKETS, self.target)
            summary, error = self._train(run, cfg, reporter)
            if summary is None:
                return {**entry, "state": "fail", "error": error}
            runs.append({"seed": seed, "run_dir": str(run_dir), "score": score(summary, reporter.eval0,
                         self.spec.budget_s), "eval0": reporter.eval0, "stop_reason": summary.get("stop_reason"),
                         "error": error, **{key: summary.get(key) for key in ("solved", "confirmed",
                         "time_to_threshold_s", "env_steps_to_threshold", "best_eval_return", "evaluations", "env_steps")}})
            if summary.get("stop_reason") == "callback":
                return {**entry, "state": "pruned", "score": None, "pruned_at_s": summary.get("training_s")}
            reporter.finish()
        mid = statistics.median_low(r["score"] for r in runs)
        chosen = next(r for r in runs if r["score"] == mid)  # the median run speaks for the trial
        return {**entry, "state": "complete", "score": mid, "time_to_threshold_s": chosen["time_to_threshold_s"],
                "best_eval_return": chosen["best_eval_return"], "evaluations": chosen["evaluations"]}

    def _train(self, run: config.RunConfig, cfg: Any, reporter: _Reporter) -> tuple[dict[str, Any] | None, str | None]:
        """Train one run in this process: (its summary, the error that ended it, if any)."""
        try:
            if self.algo == "es":
                from esrl.train import train

                if run.backend == "vectorized":  # imported before the clock starts, as `esrl train` does
                    import esrl.es.vectorized  # noqa: F401

                return train(run, cfg, show_progress=False, callbacks=[reporter]), None
            from esrl.train_rl import train_rl

            return train_rl(self.algo, run, cfg, show_progress=False, callbacks=[reporter]), None
        except InputError as exc:
            path = Path(run.run_dir) / "summary.json"
            if exc.field == "run" and path.is_file():  # a worker failure or a non-finite loss: scored as it stood
                return json.loads(path.read_text()), str(exc)
            return None, str(exc)


def _counted(t: Any) -> bool:
    """Finished trials count toward `trials`; one cut short by an interrupt or a kill does not (it is re-run)."""
    name = t.state.name
    return name in ("COMPLETE", "PRUNED") or (name == "FAIL" and "error" in t.user_attrs)


def tune(algo: str, spec: TuneSpec, space: tuple[Param, ...] | None = None, overrides: dict[str, Any] | None = None,
         pruner: Any = None, quiet: bool = False) -> dict[str, Any]:
    """Run (or continue) the study of `algo` until it holds `spec.trials` finished trials; a summary of it.

    `space` replaces SPACES[algo] and `overrides` are settings over the preset that no trial samples (tests use
    both to make trials tiny); `pruner` replaces the MedianPruner; one line per trial goes to stderr unless `quiet`.
    """
    tuner = Tuner(algo, spec, space, overrides, quiet)  # bad input is refused first, optuna or not
    optuna = _import_optuna()
    tuner.open_out()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tuner.locked():
        return _optimize(optuna, tuner, pruner)


def _optimize(optuna: Any, tuner: Tuner, pruner: Any) -> dict[str, Any]:
    spec = tuner.spec
    TrialState = optuna.trial.TrialState
    try:
        study = optuna.create_study(
            storage=tuner.storage, study_name=f"esrl-{tuner.algo}-{spec.env}", direction="maximize",
            load_if_exists=True,
            pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP, n_warmup_steps=0))
    except Exception as exc:  # a bad URL or a storage that cannot be reached: SQLAlchemy's many errors
        raise InputError("storage", f"cannot open {tuner.storage}: {str(exc).splitlines()[0]}") from None
    _recover(study, TrialState)
    # seeded from the tune's seed and the trials so far: a continued tune does not replay the first samples
    study.sampler = optuna.samplers.TPESampler(
        seed=seeding.derive_int(spec.seed, "tune_sampler", len(study.get_trials(deepcopy=False))),
        n_startup_trials=SAMPLER_STARTUP)
    best_number = _best(study, TrialState)
    if best_number is not None:
        tuner.write_best(study.best_trial, _finished(study))
    while _finished(study) < spec.trials:
        trial = study.ask()
        try:
            entry = tuner.run_trial(trial)
        except BaseException:  # an interrupt (or a bug): uncounted, and re-run first by the next tune
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            tuner.record({"trial": trial.number, "state": "interrupted", "params": trial.user_attrs.get("settings")})
            raise
        if entry["state"] == "complete":
            study.tell(trial, entry["score"])
        elif entry["state"] == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        else:
            trial.set_user_attr("error", entry["error"])
            study.tell(trial, state=TrialState.FAIL)
        tuner.record(entry)
        new_best = _best(study, TrialState)
        if new_best is not None and new_best != best_number:
            best_number = new_best
            tuner.write_best(study.best_trial, _finished(study))
        _progress(tuner, study, entry, best_number)
    return _result(tuner, study, best_number)


def _finished(study: Any) -> int:
    return sum(_counted(t) for t in study.get_trials(deepcopy=False))


def _best(study: Any, TrialState: Any) -> int | None:
    return study.best_trial.number if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else None


def _recover(study: Any, TrialState: Any) -> None:
    """Trials left running by a killed tune (the lock says none is alive) fail; an interrupted or killed
    trial's settings are enqueued once, so the continued tune runs them first."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and not _counted(t) and t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})


def _progress(tuner: Tuner, study: Any, entry: dict[str, Any], best_number: int | None) -> None:
    if tuner.quiet:
        return
    run = entry["runs"][-1] if entry["runs"] else {}
    if entry["state"] == "complete":
        ttt = entry.get("time_to_threshold_s")
        state = f"solved in {ttt:.1f} s" if ttt is not None else f"best eval {entry.get('best_eval_return')}"
        what = f"score {entry['score']:.3f} ({state}, {entry.get('evaluations')} evaluations)"
    elif entry["state"] == "pruned":
        what = f"pruned at {entry.get('pruned_at_s') or 0:.1f} s (best eval {run.get('best_eval_return')})"
    else:
        what = f"failed: {entry.get('error')}"
    best = (f"best {study.best_value:.3f} (trial {best_number})" if best_number is not None else "no best yet")
    params = " ".join(f"{k}={v}" for k, v in entry["params"].items())
    print(f"tune {tuner.algo} {tuner.spec.env}: trial {entry['trial']} ({_finished(study)}/{tuner.spec.trials}) "
          f"{what}; {best} [{params}]", file=sys.stderr, flush=True)


def _result(tuner: Tuner, study: Any, best_number: int | None) -> dict[str, Any]:
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    best = None
    if best_number is not None:
        bt = study.best_trial
        best = {"trial": bt.number, "score": bt.value, "settings": bt.user_attrs.get("settings"),
                "best_toml": str(tuner.out / "best.toml")}
    return {"out": str(tuner.out), "storage": tuner.storage, "finished": _finished(study), "states": states,
            "target_return": tuner.target, "best": best}

