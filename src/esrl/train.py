"""The ES training loop: one iteration = tasks out, scalars back, one shaped broadcast.

Glue between the algorithm (esrl.es), a backend (esrl.backends) and the run directory.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from esrl import protocol
from esrl.backends import default_workers, make_backend
from esrl.backends.base import Backend
from esrl.config import ESConfig, RunConfig, check_combination
from esrl.errors import InputError
from esrl.es import algorithm as es
from esrl.progress import Progress
from esrl.protocol import Counters, Measurement, resolve_target
from esrl.runs import checkpoint, interrupts, sinks
from esrl.runs.rundir import RunDir
from esrl.train_common import default_run_dir, resolve_device, write_config

ALGORITHM = "es"
# fields of a metrics line that do not depend on timing: equal for equal seeds
DETERMINISTIC_KEYS = ("iteration", "env_steps", "episodes", "eval_env_steps", "eval_episodes", "return_mean",
                      "return_max", "return_min", "eval_return", "unperturbed_rank", "update_norm", "step_cap",
                      "nonfinite_returns")


def train(run: RunConfig, cfg: ESConfig, overwrite: bool = False, resume: bool = False,
          show_progress: bool = True, worker_setup: Callable[[es.ESSetup], Any] | None = None,
          callbacks: Sequence[sinks.Callback] | None = None) -> dict[str, Any]:
    """Train (or resume) an ES run; returns the summary written to summary.json.

    `worker_setup` wraps the setup that workers build their replicas from (fault injection).
    `callbacks` are called with each metrics line (a dict); one that returns False stops the run
    after that iteration (stop_reason "callback"), checkpointed and resumable.
    """
    t_start = time.perf_counter()
    run.validate()
    cfg.validate()
    run_dir_path = run.run_dir or default_run_dir(ALGORITHM, run)
    spec = run.env_spec()
    target = resolve_target(run, spec)
    setup: es.ESSetup = es.ESSetup(cfg, spec, run.seed)
    check_combination(ALGORITHM, run, cfg, spec=spec)
    if run.backend == "vectorized":
        from esrl.es.vectorized import ESTorchSetup

        setup = ESTorchSetup(cfg, spec, run.seed, device=resolve_device(run.device))

    state: dict[str, Any] | None = None
    counters = Counters()
    workers = 1 if run.backend in ("serial", "vectorized") else (run.workers or default_workers())
    if not resume:
        RunDir.check_new(run_dir_path, overwrite)
    # the backend starts (or joins Ray) before anything on disk changes: a bad address loses no run
    backend: Backend | None = None
    if run.backend == "ray":
        from esrl.backends.ray_backend import RayBackend

        ray_backend = RayBackend(run.workers, address=run.address or None)
        backend, workers = ray_backend, ray_backend.n  # workers 0: one actor per CPU of the cluster
    elif run.backend != "simulated":  # the simulated backend is priced on the coordinator's replica, below
        backend = make_backend("serial" if run.backend == "vectorized" else run.backend, workers)
    if resume:
        rd = RunDir.open(run_dir_path)
        master = setup.build()
        manifest_path = checkpoint.latest(rd.checkpoints)
        if manifest_path is not None:
            tensors, manifest = checkpoint.load(manifest_path, ALGORITHM, {"theta": (master.dim,)})
            state = {**tensors, **manifest["meta"]["scalars"]}
            counters = Counters.from_checkpoint(manifest)
            master.set_state(state)
        rd.truncate_metrics(master.iteration)
        costs = _costs(run, master, spec, run_dir_path, resume)
    else:
        master = setup.build()  # the noise table is built before workers fork: they share it
        costs = _costs(run, master, spec, run_dir_path, resume)  # a bad --sim-costs file is refused before the run dir
        try:
            rd = RunDir.create(run_dir_path, overwrite)
        except BaseException:
            if backend is not None:
                backend.close()
            raise
    run = dataclasses.replace(run, run_dir=str(rd.path))
    resolved: dict[str, Any] = {"target_return": target, "workers": workers, "num_params": master.dim,
                                "noise_table_size": master.table_size}
    m: Measurement
    now: Callable[[], float] = time.perf_counter
    if backend is None:  # simulated: every time in virtual seconds, from a cost model fixed from here on
        assert costs is not None
        backend, m, now = _simulated(run, costs, workers, counters, target)
        resolved.update(clock="virtual", cost_model=costs.to_dict())
    else:
        m = Measurement(run, target, counters, t_start)
    sinks.attach(rd, run, callbacks)
    write_config(rd, ALGORITHM, run, cfg, resolved)

    progress = Progress(show_progress)

    def save_checkpoint(directory: Any = None, state: dict[str, Any] | None = None) -> None:
        st = master.get_state() if state is None else state
        tensors = {k: v for k, v in st.items() if isinstance(v, np.ndarray)}
        scalars = {k: v for k, v in st.items() if not isinstance(v, np.ndarray)}
        checkpoint.save(rd.checkpoints if directory is None else directory, ALGORITHM, int(st["iteration"]), tensors,
                        {"scalars": scalars, "counters": m.checkpoint_counters(backend.traffic), "env": run.env,
                         "num_params": master.dim})

    def play(replica: es.ESReplica) -> protocol.Play:
        act = replica.greedy_act()
        return lambda seeds: protocol.play_episodes(spec, act, seeds)

    threshold_play: protocol.Play | None = None
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
                if run.budget_spent(t, m.elapsed(), counters.env_steps):
                    break
                ev = m.evaluate(play(master)) if m.due() else None  # workers are idle between iterations
                if ev is not None and ev.first:
                    threshold_play = play(master)
                    save_checkpoint(rd.path / "threshold")
                if ev is not None and ev.best:
                    m.off_clock(partial(save_checkpoint, rd.path / "best"))
                if ev is not None and ev.first and run.stop_on_solve:
                    last = {"iteration": t, "wall_s": m.elapsed(), "training_s": m.training_s(),
                            "env_steps": counters.env_steps, "episodes": counters.episodes,
                            "eval_env_steps": counters.eval_env_steps, "eval_episodes": counters.eval_episodes,
                            "eval_return": ev.mean}
                    rd.append_metrics(last)
                    stop_reason = "solved"
                    break
                last = _iteration(t, ev, master, backend, cfg, run, spec, workers, m, now)
                keep_going = rd.append_metrics(last)
                progress.update(last, run.max_seconds, run.max_iterations)
                if master.iteration % run.checkpoint_every == 0:
                    save_checkpoint()
                if not keep_going:  # a callback asked to stop: the final checkpoint follows, as for a budget
                    stop_reason = "callback"
                    break
        except KeyboardInterrupt:
            stop_reason, hard_stop = "interrupted", True
        finally:
            backend.close()
            progress.close()
    if not hard_stop:
        save_checkpoint()
    m.stop_clock()  # the confirmation is outside the timed run
    if m.solved and counters.confirmed_return is None and run.confirm_episodes:
        m.confirm(threshold_play or play(_threshold_replica(setup, rd.path / "threshold", master.dim)))
    summary = {
        "algorithm": ALGORITHM,
        "env": run.env,
        "seed": run.seed,
        "backend": run.backend,
        "workers": workers,
        "sync": "scalars",
        "stop_reason": stop_reason,
        "iterations": master.iteration,
        **m.summary(backend.traffic, getattr(backend, "transport", run.backend)),
        "clock": "virtual" if run.backend == "simulated" else "wall",
        "num_params": master.dim,
    }
    if run.backend == "vectorized":  # memory is bounded by chunking the population: the largest batch it held
        summary["batch_peak_bytes"] = getattr(backend, "peak_bytes", None)
    rd.write_json("summary.json", summary)
    if stop_reason == "interrupted":
        raise KeyboardInterrupt
    return summary


def _iteration(t: int, ev: protocol.Evaluation | None, master: es.ESReplica, backend: Backend, cfg: ESConfig,
               run: RunConfig, spec: Any, workers: int, m: Measurement, now: Callable[[], float]) -> dict[str, Any]:
    """One generation: tasks out, scalars back, the shaped broadcast applied; its metrics line (times from `now`:
    the wall clock, or the simulated backend's virtual one)."""
    counters = m.counters
    it_start = now()
    before = backend.traffic.snapshot()
    work = es.tasks(t, cfg.population, workers, cfg.chunk, getattr(backend, "task_tail", 64))
    results = es.gather(backend.run(work), cfg.population)
    steps = int(results.lengths.sum())
    counters.env_steps += steps
    counters.episodes += cfg.population
    update, nonfinite = es.make_update(cfg, t, results, spec.max_episode_steps)
    step_cap = master.step_cap
    backend.broadcast(update)
    update_norm = master.apply(update)
    if master.iteration % run.verify_every == 0:
        backend.verify(master.digest())
    traffic = backend.traffic.since(before)
    wall = now() - it_start
    finite = results.returns[np.isfinite(results.returns)]
    line = {
        "iteration": t,
        "wall_s": m.elapsed(),
        "training_s": m.training_s(),
        "iteration_s": wall,
        "env_steps": counters.env_steps,
        "episodes": counters.episodes,
        "eval_env_steps": counters.eval_env_steps,
        "eval_episodes": counters.eval_episodes,
        "return_mean": float(finite.mean()) if finite.size else None,
        "return_max": float(finite.max()) if finite.size else None,
        "return_min": float(finite.min()) if finite.size else None,
        "eval_return": None if ev is None else ev.mean,
        "unperturbed_rank": None if ev is None else es.unperturbed_rank(results.returns, ev.mean),
        "update_norm": update_norm,
        "step_cap": step_cap,
        "nonfinite_returns": nonfinite,
        "steps_per_s": steps / wall,
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
    return line


def _costs(run: RunConfig, master: es.ESReplica, spec: Any, run_dir: str, resume: bool) -> Any:
    """The simulated backend's cost model: measured on the coordinator's replica, or read (--sim-costs, a resumed
    run's config.json); None for the other backends."""
    if run.backend != "simulated":
        return None
    from esrl.sim import calibrate
    from esrl.sim import costs as sim_costs

    return sim_costs.resolve(run, run_dir, resume, lambda: calibrate.es_costs(master, spec, run.seed))


def _simulated(run: RunConfig, costs: Any, workers: int, counters: Counters, target: float | None
               ) -> tuple[Any, Measurement, Callable[[], float]]:
    """The simulated backend, the measurement on its virtual clock, and that clock."""
    from esrl.backends.simulated import SimulatedBackend
    from esrl.sim import calibrate
    from esrl.sim.clock import SimClock, VirtualMeasurement
    from esrl.sim.faults import WorkerModel
    from esrl.sim.network import NetSpec

    clock = SimClock()
    backend = SimulatedBackend(workers, clock, NetSpec.of(run), costs, calibrate.es_work(costs), WorkerModel.of(run),
                               run.broadcast, run.fanout, calibrate.es_run_all)
    m = VirtualMeasurement(run, target, counters, clock, calibrate.eval_step_s(costs, True, run.eval_episodes))
    return backend, m, clock.now


def _threshold_replica(setup: es.ESSetup, directory: Any, dim: int) -> es.ESReplica:
    """The replica saved when the target was first reached (a resumed run confirms it from disk)."""
    replica = setup.build()
    manifest = checkpoint.latest(directory)
    if manifest is None:
        raise InputError("run_dir", f"{directory} holds no threshold checkpoint to confirm")
    tensors, meta = checkpoint.load(manifest, ALGORITHM, {"theta": (dim,)})
    replica.set_state({**tensors, **meta["meta"]["scalars"]})
    return replica
