"""The ES training loop: one iteration = tasks out, scalars back, one shaped broadcast.

Glue between the algorithm (esrl.es), a backend (esrl.backends) and the run directory.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from esrl import __version__, envs
from esrl.backends import default_workers, make_backend
from esrl.backends.base import Backend
from esrl.config import ESConfig, RunConfig, check_combination, to_dict
from esrl.es import algorithm as es
from esrl.progress import Progress
from esrl.runs import checkpoint, interrupts
from esrl.runs.rundir import RunDir

ALGORITHM = "es"
# fields of a metrics line that do not depend on timing: equal for equal seeds
DETERMINISTIC_KEYS = ("iteration", "env_steps", "episodes", "return_mean", "return_max", "return_min",
                      "eval_return", "unperturbed_rank", "update_norm", "step_cap", "nonfinite_returns")


@dataclasses.dataclass
class Counters:
    """Run totals that a checkpoint carries across a resume."""

    env_steps: int = 0
    episodes: int = 0
    elapsed_s: float = 0.0
    time_to_threshold_s: float | None = None
    best_eval_return: float | None = None


def resolve_target(run: RunConfig, spec: envs.EnvSpec) -> float | None:
    if run.target_return is not None:
        return run.target_return
    env = envs.make(spec.env_id)
    try:
        thr = env.spec.reward_threshold if env.spec is not None else None
    finally:
        env.close()
    return None if thr is None else float(thr)


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_run_dir(run: RunConfig) -> str:
    return f"runs/{ALGORITHM}-{run.env}-s{run.seed}"


def train(run: RunConfig, cfg: ESConfig, overwrite: bool = False, resume: bool = False,
          show_progress: bool = True, worker_setup: Callable[[es.ESSetup], Any] | None = None) -> dict[str, Any]:
    """Train (or resume) an ES run; returns the summary written to summary.json.

    `worker_setup` wraps the setup that workers build their replicas from (fault injection).
    """
    t_start = time.perf_counter()
    run.validate()
    cfg.validate()
    run_dir_path = run.run_dir or default_run_dir(run)
    spec = run.env_spec()
    target = resolve_target(run, spec)
    setup: es.ESSetup = es.ESSetup(cfg, spec, run.seed)
    check_combination(ALGORITHM, run, cfg, spec=spec)
    if run.backend == "vectorized":
        from esrl.es.vectorized import ESTorchSetup

        setup = ESTorchSetup(cfg, spec, run.seed, device=_device(run.device))

    state: dict[str, Any] | None = None
    counters = Counters()
    workers = 1 if run.backend in ("serial", "vectorized") else (run.workers or default_workers())
    if not resume:
        RunDir.check_new(run_dir_path, overwrite)
    # the backend starts (or joins Ray) before anything on disk changes: a bad address loses no run
    backend: Backend
    if run.backend == "ray":
        from esrl.backends.ray_backend import RayBackend

        ray_backend = RayBackend(run.workers, address=run.address or None)
        backend, workers = ray_backend, ray_backend.n  # workers 0: one actor per CPU of the cluster
    else:
        backend = make_backend("serial" if run.backend == "vectorized" else run.backend, workers)
    if resume:
        rd = RunDir.open(run_dir_path)
        master = setup.build()
        manifest_path = checkpoint.latest(rd.checkpoints)
        if manifest_path is not None:
            tensors, manifest = checkpoint.load(manifest_path, ALGORITHM, {"theta": (master.dim,)})
            state = {**tensors, **manifest["meta"]["scalars"]}
            counters = Counters(**manifest["meta"]["counters"])
            master.set_state(state)
        rd.truncate_metrics(master.iteration)
    else:
        master = setup.build()  # the noise table is built before workers fork: they share it
        try:
            rd = RunDir.create(run_dir_path, overwrite)
        except BaseException:
            backend.close()
            raise
    run = dataclasses.replace(run, run_dir=str(rd.path))
    rd.write_json("config.json", {"algorithm": ALGORITHM, "esrl_version": __version__, "run": to_dict(run),
                                  "es": to_dict(cfg), "resolved": {"target_return": target, "workers": workers,
                                  "num_params": master.dim, "noise_table_size": master.table_size}})

    progress = Progress(show_progress)
    offset = counters.elapsed_s

    def elapsed() -> float:
        return offset + time.perf_counter() - t_start

    def save_checkpoint() -> None:
        st = master.get_state()
        tensors = {k: v for k, v in st.items() if isinstance(v, np.ndarray)}
        scalars = {k: v for k, v in st.items() if not isinstance(v, np.ndarray)}
        checkpoint.save(rd.checkpoints, ALGORITHM, master.iteration, tensors,
                        {"scalars": scalars, "counters": dataclasses.asdict(dataclasses.replace(counters, elapsed_s=elapsed())),
                         "env": run.env, "num_params": master.dim})

    solved = counters.time_to_threshold_s is not None
    last: dict[str, Any] = {}
    stop_reason = "budget"
    hard_stop = False  # a second Ctrl-C: the state may be mid-update, keep the last periodic checkpoint
    with interrupts.deferred():
        try:
            backend.start(setup if worker_setup is None else worker_setup(setup), master.get_state)
            while True:
                t = master.iteration
                if interrupts.requested():
                    stop_reason = "interrupted"
                    break
                if run.budget_spent(t, elapsed(), counters.env_steps):
                    break
                it_start = time.perf_counter()
                before = backend.traffic.snapshot()
                n_eval = run.eval_episodes if t % run.eval_every == 0 else 0
                work = es.tasks(t, cfg.population, n_eval, workers, cfg.chunk, getattr(backend, "task_tail", 64))
                results = es.gather(backend.run(work), cfg.population, n_eval)
                eval_return = float(results.eval_returns.mean()) if n_eval else None
                counters.env_steps += int(results.lengths.sum() + results.eval_lengths.sum())
                counters.episodes += cfg.population + n_eval
                hit = eval_return is not None and target is not None and eval_return >= target
                if eval_return is not None and math.isfinite(eval_return):
                    best = counters.best_eval_return
                    counters.best_eval_return = eval_return if best is None else max(best, eval_return)
                if hit and not solved:
                    solved = True
                    counters.time_to_threshold_s = elapsed()
                update, nonfinite = es.make_update(cfg, t, results, spec.max_episode_steps)
                finishing = hit and run.stop_on_solve
                step_cap = master.step_cap
                update_norm = None
                if not finishing:
                    backend.broadcast(update)
                    update_norm = master.apply(update)
                    if master.iteration % run.verify_every == 0:
                        backend.verify(master.digest())
                traffic = backend.traffic.since(before)
                wall = time.perf_counter() - it_start
                finite = results.returns[np.isfinite(results.returns)]
                last = {
                    "iteration": t,
                    "wall_s": elapsed(),
                    "iteration_s": wall,
                    "env_steps": counters.env_steps,
                    "episodes": counters.episodes,
                    "return_mean": float(finite.mean()) if finite.size else None,
                    "return_max": float(finite.max()) if finite.size else None,
                    "return_min": float(finite.min()) if finite.size else None,
                    "eval_return": eval_return,
                    "unperturbed_rank": None if eval_return is None else es.unperturbed_rank(results.returns, eval_return),
                    "update_norm": update_norm,
                    "step_cap": step_cap,
                    "nonfinite_returns": nonfinite,
                    "steps_per_s": int(results.lengths.sum() + results.eval_lengths.sum()) / wall,
                    "bytes_sent": dict(traffic.sent),
                    "bytes_received": dict(traffic.received),
                    "bytes_sent_total": sum(traffic.sent.values()),
                    "bytes_received_total": sum(traffic.received.values()),
                    "messages": traffic.messages,
                    "compute_s": traffic.compute_s,
                    "wait_s": max(0.0, wall * backend.live_workers - traffic.compute_s),
                    "live_workers": backend.live_workers,
                    "events": [dict(e) for e in backend.events],
                }
                backend.events.clear()
                rd.append_metrics(last)
                progress.update(last, run.max_seconds, run.max_iterations)
                if finishing:
                    stop_reason = "solved"
                    break
                if master.iteration % run.checkpoint_every == 0:
                    save_checkpoint()
        except KeyboardInterrupt:
            stop_reason, hard_stop = "interrupted", True
        finally:
            backend.close()
            progress.close()
    if not hard_stop:
        save_checkpoint()
    summary = {
        "algorithm": ALGORITHM,
        "env": run.env,
        "seed": run.seed,
        "backend": run.backend,
        "workers": workers,
        "target_return": target,
        "solved": solved,
        "time_to_threshold_s": counters.time_to_threshold_s,
        "stop_reason": stop_reason,
        "iterations": master.iteration + (1 if stop_reason == "solved" else 0),
        "env_steps": counters.env_steps,
        "episodes": counters.episodes,
        "wall_s": elapsed(),
        "final_eval_return": last.get("eval_return"),
        "best_eval_return": counters.best_eval_return,
        "num_params": master.dim,
    }
    if run.backend == "vectorized":  # memory is bounded by chunking the population: the largest batch it held
        summary["batch_peak_bytes"] = getattr(backend, "peak_bytes", None)
    rd.write_json("summary.json", summary)
    if stop_reason == "interrupted":
        raise KeyboardInterrupt
    return summary
