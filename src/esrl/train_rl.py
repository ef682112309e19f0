"""The training loop of the asynchronous algorithms (A3C, DQN, Dyna-Q).

Workers update a parameter store on their own; this loop gathers their reports, writes a
metrics line (an "iteration") every `report_every` global updates and at every evaluation,
evaluates the global policy on the schedule of esrl.protocol (every `eval_every_steps`
training env steps, workers paused), checkpoints, and stops on solve, budget or failure.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from esrl import envs
from esrl.backends import default_workers
from esrl.backends.base import WorkerFailure
from esrl.backends.processes import ProcessBackend, context
from esrl.config import RunConfig, check_combination, resolve_rl
from esrl.errors import InputError
from esrl.obstat import ObsStat
from esrl.progress import Progress
from esrl.protocol import Counters, Measurement, resolve_target
from esrl.rl import nets
from esrl.rl.common import Report, optim_spec
from esrl.rl.device_pool import device_arrangement, make_arrangement
from esrl.runs import checkpoint, interrupts, sinks
from esrl.runs.rundir import RunDir
from esrl.stores import make_store
from esrl.train_common import default_run_dir, resolve_device, write_config


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
             show_progress: bool = True, callbacks: Sequence[sinks.Callback] | None = None) -> dict[str, Any]:
    """Train (or resume) an A3C, DQN or Dyna-Q run; returns the summary written to summary.json.

    `callbacks` are called with each metrics line (a dict); one that returns False stops the run
    after that line (stop_reason "callback"), checkpointed and resumable.
    """
    t_start = time.perf_counter()
    # The coordinator's torch ops are tiny; a thread pool here would spin against the workers
    # for the same cores (an evaluation took minutes that way on 2 cores).
    torch.set_num_threads(1)
    cfg = resolve_rl(algo, run, cfg)  # sync "auto" follows the backend; config.json records what it became
    cfg.validate()
    check_combination(algo, run, cfg)  # conflicts first: run.validate looks for CUDA, a conflict is refused anywhere
    run.validate()
    run_dir_path = run.run_dir or default_run_dir(algo, run)
    spec = run.env_spec()
    cfg = resolve_rl(algo, run, cfg, spec)  # obs_norm and clip_rewards "auto" follow the env
    check_combination(algo, run, cfg, spec.obs_onehot, spec)
    workers = run.workers or default_workers()
    arrangement = device_arrangement(algo, run, cfg)
    setup = setup_for(algo, cfg, spec, run.seed)
    ray_backend: Any = None
    if run.backend == "ray":  # started (or joined) before anything on disk changes: a bad address loses no run
        from esrl.backends.ray_backend import RayBackend

        ray_backend = RayBackend(run.workers, address=run.address or None)  # restarts: 3 per worker, as below
        workers = ray_backend.n  # workers 0: one worker actor per CPU of the cluster
    ctx = context()
    simulated = run.backend == "simulated"
    costs = None
    if simulated:  # measured on a scratch setup, before the run's shared replay or world model exist
        from esrl.sim import calibrate
        from esrl.sim import costs as sim_costs

        if not resume:  # refused before seconds of calibration
            RunDir.check_new(run_dir_path, overwrite)

        scratch = setup.attach(ctx, 1) if hasattr(setup, "attach") else setup
        costs = sim_costs.resolve(run, run_dir_path, resume, lambda: calibrate.rl_costs(
            scratch, optim_spec(cfg), spec, run.seed, cfg.envs_per_worker))
    if hasattr(setup, "attach") and arrangement is None:  # shared resources of the run: a global replay, a world model
        setup = setup.attach(ctx, workers)
    target = resolve_target(run, spec)
    model = setup.build_model()
    params = nets.get_flat(model)
    # the run's observation statistics: the sum of what the workers report (see rl.common.RunningObs);
    # evaluation and checkpoints use them, so the policy is played as the workers normalize
    obs_stat = ObsStat.empty((spec.obs_dim,)) if nets.normalizes(model) else None
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
            counters = Counters.from_checkpoint(manifest)
            iteration = int(manifest["meta"]["iteration"])
            if hasattr(setup, "restore"):  # the stores the setup attached: Dyna-Q's world model and counts
                setup = setup.restore(tensors)
            if obs_stat is not None:
                obs_stat = saved_obs_stat(manifest_path, tensors, manifest)
        rd.truncate_metrics(iteration)
    else:
        RunDir.check_new(run_dir_path, overwrite)
        rd = RunDir.create(run_dir_path, overwrite)
    run = dataclasses.replace(run, run_dir=str(rd.path))
    sinks.attach(rd, run, callbacks)
    if hasattr(setup, "start_steps"):  # a resumed DQN continues its epsilon schedule (its replay starts empty)
        # Dyna-Q: only worker 0 steps envs, so its schedule is all the run's steps, not a 1/workers share
        acting = 1 if algo == "dynaq" else workers
        setup = dataclasses.replace(setup, start_steps=counters.env_steps // acting)
    if obs_stat is not None and resume:  # workers go on from the run's statistics
        setup = dataclasses.replace(setup, obs_stat=obs_stat.copy())
    serial = run.backend == "serial"
    resolved: dict[str, Any] = {"target_return": target, "workers": workers, "num_params": int(params.numel()),
                                "sync": "serial" if serial else cfg.sync, "clock": "virtual" if simulated else "wall"}
    if costs is not None:
        resolved["cost_model"] = costs.to_dict()
    write_config(rd, algo, run, cfg, resolved)

    max_restarts = 3 * workers
    worker_setup = setup  # what the workers are built from (on Ray: with the run's stores as Ray twins)
    store: Any
    backend: Any  # what runs the workers (a device arrangement is backend and store in one object)
    if arrangement is not None:
        store = backend = make_arrangement(arrangement, setup, params, optim_spec(cfg), workers, ctx,
                                          resolve_device(run.device))
    elif simulated:
        assert costs is not None
        from esrl.backends.simulated import SimulatedBackend
        from esrl.sim.clock import SimClock
        from esrl.sim.faults import WorkerModel
        from esrl.sim.network import NetSpec
        from esrl.stores.simulated import SimStore

        clock = SimClock()
        store = SimStore(params, optim_spec(cfg), cfg.sync, cfg.shards)
        backend = SimulatedBackend(workers, clock, NetSpec.of(run), costs,
                                   calibrate.rl_work(costs, cfg.envs_per_worker), WorkerModel.of(run))
    elif serial:
        from esrl.backends.serial import SerialBackend

        store = make_store("lock", params, optim_spec(cfg), ctx)
        backend = SerialBackend(workers)
    elif ray_backend is not None:
        from esrl.backends.ray_backend import rl_store

        worker_setup, store = rl_store(setup, params, optim_spec(cfg), cfg.shards, ray_backend)
        backend = ray_backend
    else:
        slots = ProcessBackend.slots_needed(workers, max_restarts)
        store = make_store(cfg.sync, params, optim_spec(cfg), ctx, slots=slots, shards=cfg.shards)
        backend = ProcessBackend(workers, max_restarts, ctx=ctx)
    if loaded is not None:
        store.load(*loaded)
    start_version = loaded[2] if loaded else 0
    m: Measurement
    now: Callable[[], float] = time.perf_counter
    if simulated:  # every time in virtual seconds: the cost model's, never the wall clock's
        from esrl.sim.clock import VirtualMeasurement

        assert costs is not None
        m = VirtualMeasurement(run, target, counters, clock, calibrate.eval_step_s(costs, False, run.eval_episodes))
        now = clock.now
    else:
        m = Measurement(run, target, counters, t_start)

    def save_checkpoint(snap: tuple[torch.Tensor, dict[str, torch.Tensor], int], iteration: int,
                        directory: Path | None = None) -> None:
        p, st, version = snap
        extra = worker_setup.checkpoint_tensors() if hasattr(worker_setup, "checkpoint_tensors") else {}
        meta: dict[str, Any] = {"version": version, "iteration": iteration,
                                "counters": m.checkpoint_counters(backend.traffic)}
        if obs_stat is not None:  # the normalization the parameters were trained with travels with them
            extra = {**extra, "obs_sum": obs_stat.total, "obs_sumsq": obs_stat.sumsq}
            meta["obs_count"] = obs_stat.count
        checkpoint.save(rd.checkpoints if directory is None else directory, algo, version,
                        {"params": p.numpy(), "opt_m": st["m"].numpy(), "opt_v": st["v"].numpy(), **extra}, meta)

    def play(params: torch.Tensor, stat: ObsStat | None) -> Any:
        return lambda seeds: setup.evaluate(params, seeds, stat)

    progress = Progress(show_progress)
    updates = start_version
    next_line = (updates // cfg.report_every + 1) * cfg.report_every
    interval = Report()
    it_start = now()
    before = backend.traffic.snapshot()
    last: dict[str, Any] = {}
    stop_reason, failure = "budget", None
    threshold_params: torch.Tensor | None = None
    threshold_obs: ObsStat | None = None
    hard_stop = False

    def fold(reports: list[Any]) -> None:
        nonlocal updates
        for rep in reports:
            if obs_stat is not None and rep.obs is not None:
                obs_stat.merge(rep.obs)
            interval.merge(rep)
            updates += rep.updates
            counters.env_steps += rep.env_steps
            counters.episodes += len(rep.returns)

    started = False  # workers start after the initial policy's evaluation (at 0 env steps, as for ES)
    with interrupts.deferred():
        try:
            while True:
                if started:
                    fold(backend.poll(0.05))
                evaluate = m.due()
                if updates >= next_line or evaluate:
                    next_line = (updates // cfg.report_every + 1) * cfg.report_every  # reports may carry many
                    wall = now() - it_start  # the interval's training time, before any evaluation
                    ev = None
                    if evaluate:
                        backend.pause()  # no worker starts an update while the policy is evaluated
                        fold(backend.settle())  # updates in hand finish and are counted: the store holds what was
                        snap = store.snapshot()
                        ev = m.evaluate(play(snap[0], obs_stat))
                        if ev.first:
                            threshold_params = snap[0].clone()
                            threshold_obs = None if obs_stat is None else obs_stat.copy()
                            save_checkpoint(snap, iteration, rd.path / "threshold")
                        if ev.best:
                            m.off_clock(partial(save_checkpoint, snap, iteration, rd.path / "best"))
                        if not (ev.first and run.stop_on_solve):
                            backend.resume()
                    traffic = backend.traffic.since(before)
                    last = _metrics_line(iteration, m, wall, interval, ev, backend, traffic, updates)
                    backend.events.clear()
                    backend.staleness.clear()
                    keep_going = rd.append_metrics(last)
                    progress.update(last, run.max_seconds, run.max_iterations)
                    iteration += 1
                    if iteration % run.checkpoint_every == 0:
                        save_checkpoint(store.snapshot(), iteration)
                    interval, it_start, before = Report(), now(), backend.traffic.snapshot()
                    if ev is not None and ev.first and run.stop_on_solve:
                        stop_reason = "solved"
                        break
                    if not keep_going:  # a callback asked to stop: the final checkpoint follows, as for a budget
                        stop_reason = "callback"
                        break
                if not started:
                    if arrangement is not None:
                        backend.start()
                    else:
                        backend.start(worker_setup, store=store)
                    started = True
                if run.budget_spent(iteration, m.elapsed(), counters.env_steps):
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
            fold(backend.close() if started else [])
    if failure is None and not hard_stop:
        save_checkpoint(store.snapshot(), iteration)
    store.close()
    m.stop_clock()  # the confirmation is outside the timed run
    if m.solved and counters.confirmed_return is None and run.confirm_episodes:
        if threshold_params is None:
            threshold_params, threshold_obs = _threshold_params(algo, rd.path / "threshold", tuple(params.shape),
                                                                obs_stat is not None)
        m.confirm(play(threshold_params, threshold_obs))
    summary = {
        "algorithm": algo, "env": run.env, "seed": run.seed, "backend": run.backend, "workers": workers,
        "sync": "serial" if serial else cfg.sync, "stop_reason": stop_reason, "iterations": iteration,
        "updates": updates, **m.summary(backend.traffic, getattr(backend, "transport", run.backend)),
        "clock": "virtual" if simulated else "wall",
        "num_params": int(params.numel()), "error": failure,
    }
    rd.write_json("summary.json", summary)
    if stop_reason == "interrupted":
        raise KeyboardInterrupt
    if failure is not None:
        raise InputError("run", f"stopped: {failure.splitlines()[-1] if stop_reason == 'worker_error' else failure}")
    return summary


def _threshold_params(algo: str, directory: Path, shape: tuple[int, ...], obs_norm: bool
                      ) -> tuple[torch.Tensor, ObsStat | None]:
    """The parameters saved when the target was first reached, and their observation statistics (a resumed
    run confirms them from disk)."""
    manifest_path = checkpoint.latest(directory)
    if manifest_path is None:
        raise InputError("run_dir", f"{directory} holds no threshold checkpoint to confirm")
    tensors, manifest = checkpoint.load(manifest_path, algo, {"params": shape})
    stat = saved_obs_stat(manifest_path, tensors, manifest) if obs_norm else None
    return torch.from_numpy(tensors["params"]), stat


def saved_obs_stat(path: Path, tensors: dict[str, np.ndarray], manifest: dict[str, Any]) -> ObsStat:
    """The observation statistics a checkpoint of a run with obs_norm holds."""
    count = manifest.get("meta", {}).get("obs_count")
    if "obs_sum" not in tensors or "obs_sumsq" not in tensors or not isinstance(count, int | float):
        raise InputError("checkpoint", f"{path}: holds no observation statistics, and this run normalizes "
                         "observations", "a checkpoint of the same config")
    return ObsStat(tensors["obs_sum"].astype(np.float64), tensors["obs_sumsq"].astype(np.float64), float(count))


def _metrics_line(iteration: int, m: Measurement, it_s: float, rep: Report, ev: Any, backend: Any, traffic: Any,
                  updates: int) -> dict[str, Any]:
    st = np.asarray(backend.staleness, float)
    rets = np.asarray(rep.returns, float)
    workers = backend.live_workers
    c = m.counters
    return {
        "iteration": iteration, "wall_s": m.elapsed(), "training_s": m.training_s(), "iteration_s": it_s,
        "updates": updates, "env_steps": c.env_steps, "episodes": c.episodes, "eval_env_steps": c.eval_env_steps,
        "eval_episodes": c.eval_episodes,
        "return_mean": float(rets.mean()) if rets.size else None,
        "return_max": float(rets.max()) if rets.size else None,
        "return_min": float(rets.min()) if rets.size else None,
        "eval_return": None if ev is None else ev.mean,
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
        "events": [dict(e) for e in backend.events],
    }
