"""The training loop of the asynchronous algorithms (A3C, DQN, Dyna-Q).

Workers update a parameter store on their own; this loop gathers their reports, and every
`report_every` global updates (an "iteration") writes a metrics line, evaluates the global
policy every `eval_every` iterations, checkpoints, and stops on solve, budget or failure.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
import torch

from esrl import __version__, envs, seeding
from esrl.backends import default_workers
from esrl.backends.pool import ProcessPool, SerialPool, WorkerFailure, context
from esrl.config import RunConfig, check_combination, to_dict
from esrl.errors import InputError
from esrl.progress import Progress
from esrl.rl import nets
from esrl.rl.common import Report, optim_spec
from esrl.rl.device_pool import device_arrangement, make_arrangement
from esrl.runs import checkpoint, interrupts
from esrl.runs.rundir import RunDir
from esrl.stores import make_store
from esrl.train import Counters, resolve_target


def setup_for(algo: str, cfg: Any, spec: envs.EnvSpec, seed: int) -> Any:
    if algo == "a3c":
        from esrl.rl.a3c import A3CSetup

        return A3CSetup(cfg, spec, seed)
    if algo == "dqn":
        from esrl.rl.dqn import DQNSetup

        return DQNSetup(cfg, spec, seed)
    if algo == "dynaq":
        from esrl.rl.dynaq import DynaQSetup

        return DynaQSetup(cfg, spec, seed)
    raise InputError("algo", f"unknown algorithm {algo!r}", "es, a3c, dqn, dynaq")


def train_rl(algo: str, run: RunConfig, cfg: Any, overwrite: bool = False, resume: bool = False,
             show_progress: bool = True) -> dict[str, Any]:
    """Train (or resume) an A3C, DQN or Dyna-Q run; returns the summary written to summary.json."""
    t_start = time.perf_counter()
    # The coordinator's torch ops are tiny; a thread pool here would spin against the workers
    # for the same cores (an evaluation took minutes that way on 2 cores).
    torch.set_num_threads(1)
    run.validate()
    cfg.validate()
    run_dir_path = run.run_dir or f"runs/{algo}-{run.env}-s{run.seed}"
    spec = run.env_spec()
    check_combination(algo, run, cfg, spec.obs_onehot, spec)
    workers = run.workers or default_workers()
    arrangement = device_arrangement(algo, run, cfg)
    if arrangement is not None:
        cfg = dataclasses.replace(cfg, sync=arrangement)
    setup = setup_for(algo, cfg, spec, run.seed)
    started_ray = False
    if run.backend == "ray":  # started (or joined) before anything on disk changes: a bad address loses no run
        from esrl.backends import ray_pool

        started_ray = ray_pool.init(run.address or None, run.workers)
        if not run.workers:  # one worker actor per CPU of the cluster
            from esrl.backends.ray_backend import cluster_cpus

            workers = cluster_cpus()
    ctx = context()
    if hasattr(setup, "attach") and arrangement is None:  # shared resources of the run: a global replay, a world model
        setup = setup.attach(ctx, workers)
    target = resolve_target(run, spec)
    model = setup.build_model()
    params = nets.get_flat(model)
    counters = Counters()
    loaded: tuple[torch.Tensor, dict[str, torch.Tensor], int] | None = None
    iteration = 0
    if resume:
        rd = RunDir.open(run_dir_path)
        manifest_path = checkpoint.latest(rd.checkpoints)
        if manifest_path is not None:
            tensors, manifest = checkpoint.load(manifest_path, algo, {"params": tuple(params.shape)})
            loaded = (torch.from_numpy(tensors["params"]), {"m": torch.from_numpy(tensors["opt_m"]),
                      "v": torch.from_numpy(tensors["opt_v"])}, int(manifest["meta"]["version"]))
            counters = Counters(**manifest["meta"]["counters"])
            iteration = int(manifest["meta"]["iteration"])
        rd.truncate_metrics(iteration)
    else:
        RunDir.check_new(run_dir_path, overwrite)
        rd = RunDir.create(run_dir_path, overwrite)
    run = dataclasses.replace(run, run_dir=str(rd.path))
    if hasattr(setup, "start_steps"):  # a resumed DQN continues its epsilon schedule (its replay starts empty)
        setup = dataclasses.replace(setup, start_steps=counters.env_steps // workers)
    serial = run.backend == "serial"
    rd.write_json("config.json", {"algorithm": algo, "esrl_version": __version__, "run": to_dict(run),
                                  algo: to_dict(cfg), "resolved": {"target_return": target, "workers": workers,
                                  "num_params": int(params.numel()), "sync": "serial" if serial else cfg.sync}})

    max_restarts = 3 * workers
    store: Any
    pool: Any
    if arrangement is not None:  # the model on a device, actors on the CPU: one object is pool and store
        store = pool = make_arrangement(arrangement, setup, params, optim_spec(cfg), workers, ctx, run.device)
    elif serial:
        store = make_store("lock", params, optim_spec(cfg), ctx)
        pool = SerialPool(setup, store, workers)
    elif run.backend == "ray":
        store, pool = ray_pool.make(setup, params, optim_spec(cfg), cfg.shards, workers, max_restarts, started_ray)
    else:
        slots = ProcessPool.slots_needed(workers, max_restarts)
        store = make_store(cfg.sync, params, optim_spec(cfg), ctx, slots=slots, shards=cfg.shards)
        pool = ProcessPool(setup, store, workers, ctx, max_restarts)
    if loaded is not None:
        store.load(*loaded)
    offset = counters.elapsed_s
    start_version = loaded[2] if loaded else 0

    def elapsed() -> float:
        return offset + time.perf_counter() - t_start

    def save_checkpoint(snap: tuple[torch.Tensor, dict[str, torch.Tensor], int], iteration: int) -> None:
        p, st, version = snap
        checkpoint.save(rd.checkpoints, algo, version, {"params": p.numpy(), "opt_m": st["m"].numpy(),
                        "opt_v": st["v"].numpy()},
                        {"version": version, "iteration": iteration,
                         "counters": dataclasses.asdict(dataclasses.replace(counters, elapsed_s=elapsed()))})

    progress = Progress(show_progress)
    solved = counters.time_to_threshold_s is not None
    updates = start_version
    next_line = (updates // cfg.report_every + 1) * cfg.report_every
    interval = Report()
    it_start = time.perf_counter()
    before = pool.traffic.snapshot()
    last: dict[str, Any] = {}
    stop_reason, failure = "budget", None
    hard_stop = False
    with interrupts.deferred():
        try:
            pool.start()
            while True:
                for rep in pool.poll(0.05):
                    interval.merge(rep)
                    updates += rep.updates
                    counters.env_steps += rep.env_steps
                    counters.episodes += len(rep.returns)
                if updates >= next_line:
                    next_line = (updates // cfg.report_every + 1) * cfg.report_every  # reports may carry many
                    n_eval = run.eval_episodes if iteration % run.eval_every == 0 else 0
                    snap = store.snapshot()
                    eval_return = None
                    if n_eval:
                        seeds = seeding.rng(run.seed, "eval_seeds", iteration).integers(0, 2**31 - 1, size=n_eval)
                        rets, _lens = setup.evaluate(snap[0], seeds)
                        eval_return = float(rets.mean())
                        if math.isfinite(eval_return):
                            best = counters.best_eval_return
                            counters.best_eval_return = eval_return if best is None else max(best, eval_return)
                    hit = eval_return is not None and target is not None and eval_return >= target
                    if hit and not solved:
                        solved = True
                        counters.time_to_threshold_s = elapsed()
                    traffic = pool.traffic.since(before)
                    wall = time.perf_counter() - it_start
                    last = _metrics_line(iteration, elapsed(), wall, counters, interval, eval_return, pool, traffic,
                                         updates)
                    pool.events.clear()
                    pool.staleness.clear()
                    rd.append_metrics(last)
                    progress.update(last, run.max_seconds, run.max_iterations)
                    iteration += 1
                    if iteration % run.checkpoint_every == 0 or (hit and run.stop_on_solve):
                        save_checkpoint(snap, iteration)
                    interval, it_start, before = Report(), time.perf_counter(), pool.traffic.snapshot()
                    if hit and run.stop_on_solve:
                        stop_reason = "solved"
                        break
                if run.budget_spent(iteration, elapsed(), counters.env_steps):
                    break
                if interrupts.requested():
                    stop_reason = "interrupted"
                    break
        except WorkerFailure as exc:
            stop_reason, failure = ("nonfinite" if exc.nonfinite else "worker_error"), str(exc)
        except KeyboardInterrupt:  # a second Ctrl-C: a serial update may be half applied
            stop_reason, failure = "interrupted", None
            hard_stop = True
        finally:
            for rep in pool.close():
                updates += rep.updates
                counters.env_steps += rep.env_steps
                counters.episodes += len(rep.returns)
    if failure is None and stop_reason != "solved" and not hard_stop:
        save_checkpoint(store.snapshot(), iteration)
    store.close()
    summary = {
        "algorithm": algo, "env": run.env, "seed": run.seed, "backend": run.backend, "workers": workers,
        "sync": "serial" if serial else cfg.sync, "target_return": target, "solved": solved,
        "time_to_threshold_s": counters.time_to_threshold_s, "stop_reason": stop_reason, "iterations": iteration,
        "updates": updates, "env_steps": counters.env_steps, "episodes": counters.episodes, "wall_s": elapsed(),
        "final_eval_return": last.get("eval_return"), "best_eval_return": counters.best_eval_return,
        "num_params": int(params.numel()), "error": failure,
    }
    rd.write_json("summary.json", summary)
    if stop_reason == "interrupted":
        raise KeyboardInterrupt
    if failure is not None:
        raise InputError("run", f"stopped: {failure.splitlines()[-1] if stop_reason == 'worker_error' else failure}")
    return summary


def _metrics_line(iteration: int, wall_s: float, it_s: float, counters: Counters, rep: Report,
                  eval_return: float | None, pool: Any, traffic: Any, updates: int) -> dict[str, Any]:
    st = np.asarray(pool.staleness, float)
    rets = np.asarray(rep.returns, float)
    workers = pool.live_workers
    return {
        "iteration": iteration, "wall_s": wall_s, "iteration_s": it_s, "updates": updates,
        "env_steps": counters.env_steps, "episodes": counters.episodes,
        "return_mean": float(rets.mean()) if rets.size else None,
        "return_max": float(rets.max()) if rets.size else None,
        "return_min": float(rets.min()) if rets.size else None,
        "eval_return": eval_return,
        "updates_per_s": rep.updates / it_s if it_s > 0 else None,
        "steps_per_s": rep.env_steps / it_s if it_s > 0 else 0.0,
        "staleness_mean": float(st.mean()) if st.size else None,
        "staleness_max": int(st.max()) if st.size else None,
        "losses": {k: v / max(1, rep.updates) for k, v in rep.losses.items()},
        "counts": dict(rep.counts),
        "bytes_sent": dict(traffic.sent), "bytes_received": dict(traffic.received),
        "bytes_sent_total": sum(traffic.sent.values()), "bytes_received_total": sum(traffic.received.values()),
        "messages": traffic.messages, "compute_s": traffic.compute_s,
        "wait_s": max(0.0, it_s * workers - traffic.compute_s), "live_workers": workers,
        "events": [dict(e) for e in pool.events],
    }
