"""Measure the cost model on this machine, once, at the start of a simulated run.

The training loops know what their work is made of, so the measurements are theirs:
`es_costs` times ES tasks and an update on the coordinator's replica; `rl_costs` times an
RL worker's acting, its updates and the store's optimizer step. Both time the env step and the
(de)serialisation of each message kind at the sizes the real backends send. The simulator
itself only reads the resulting numbers.
"""

from __future__ import annotations

import pickle
import time
from functools import partial
from typing import Any

import numpy as np
import torch

from esrl import envs, seeding
from esrl.sim.costs import CostModel, seconds

_DUMP = pickle.HIGHEST_PROTOCOL
_BIG = 1 << 20  # float32s in the array that prices one byte


def env_step_s(spec: envs.EnvSpec, seed: int, steps: int = 2000, budget_s: float = 0.3) -> float:
    """Seconds per step of the lean env loop, random actions (seeded), resets included: the fastest of a few rounds
    of `steps // 4` steps each (at least 25), the env's own cost with the least that other processes add."""
    env = envs.lean(envs.make_env(spec))
    space = env.action_space
    space.seed(seeding.derive_int(seed, "sim_calibrate"))
    env.reset(seed=seeding.derive_int(seed, "sim_calibrate"))
    actions = [space.sample() for _ in range(256)]
    done = 0

    def chunk(n: int) -> None:
        nonlocal done
        for _ in range(n):
            _, _, term, trunc, _ = env.step(actions[done % 256])
            done += 1
            if term or trunc:
                env.reset()

    t0 = time.perf_counter()
    chunk(25)
    first = time.perf_counter() - t0
    n = max(25, min(steps // 4, int(budget_s / 4 / max(first / 25, 1e-9))))
    out = seconds(partial(chunk, n), 4, budget_s=budget_s, fastest=True) / n
    env.close()
    return out


def byte_s() -> float:
    """One side of (de)serialising one byte: half the fastest pickle round trip of a 4 MB array, per byte."""
    a = np.ones(_BIG, np.float32)
    return seconds(lambda: pickle.loads(pickle.dumps(a, _DUMP)), fastest=True) / 2 / a.nbytes


def message_s(bodies: dict[str, Any], per_byte: float) -> dict[str, float]:
    """Fixed cost, one side, of pickling each message kind: half a round trip less its bytes' share."""
    out = {}
    for kind, body in bodies.items():
        data = pickle.dumps((kind, body), _DUMP)
        side = seconds(partial(_round_trip, (kind, body)), fastest=True) / 2
        out[kind] = max(0.0, side - len(data) * per_byte)
    return out


def _round_trip(msg: Any) -> Any:
    return pickle.loads(pickle.dumps(msg, _DUMP))


def es_costs(replica: Any, spec: envs.EnvSpec, seed: int) -> CostModel:
    """ES: a task's and a member's fixed costs, a member's env step and a task's batched step, fitted over tasks of
    1 to 64 members of the replica's current iteration at three episode caps (evaluating changes no state); its
    update; its messages."""
    from esrl.es import algorithm as es

    t, pop = replica.iteration, replica.cfg.population
    task, member, row, call, rb = _task_fit(replica, t, pop)
    state = replica.get_state()
    shaped = np.where(np.arange(pop) % 2 == 0, 0.5, -0.5).astype(np.float32)
    update = es.Update(t, shaped, None, None, 0.0, replica.step_cap, pop)

    def apply_once() -> None:
        replica.apply(update)
        replica.set_state(state)

    apply = max(0.0, seconds(apply_once, 5, fastest=True) - seconds(lambda: replica.set_state(state), 5, fastest=True))
    per_byte = byte_s()
    bodies = {"task": (0, ("pop", t, 0, min(16, pop))), "result": (0, rb, 0.0), "apply": update,
              "digest": replica.digest(), "state": state}
    return CostModel(env_step_s=env_step_s(spec, seed), task_s=task, member_s=member, row_step_s=row, call_s=call,
                     apply_s=apply, byte_s=per_byte, message_s=message_s(bodies, per_byte))


def _task_fit(replica: Any, t: int, pop: int) -> tuple[float, float, float, float, dict[str, Any]]:
    """(task, member, row, call) with a task's seconds = task + its members * member + their env steps * row + its
    longest episode * call, and the result of a 16-member task (its message size).

    A non-negative least-squares fit, in relative error, over tasks of 1, 2, 4, ... members up to 64 (or the
    population) at three episode caps (4 and 16 steps, and the env's own), each timed as the fastest of a few runs.
    The caps give episodes of other lengths from the same members, which is what separates a member's fixed cost
    (its parameter row, its env's reset) from its steps; without them the first iteration's short episodes put
    those fixed costs into the per-step terms, and later, longer episodes were priced too high (simulated ES
    iterations 1.2-1.3x the processes backend's in sim_validation)."""
    sizes = sorted({min(n, pop) for n in (1, 2, 4, 8, 16, 32, 64)})
    full = replica.step_cap
    replica.run(("pop", t, 0, max(sizes)))  # builds the envs
    rows, took = [], []
    try:
        for cap in sorted({min(c, full) for c in (4, 16, full)}):
            replica.step_cap = cap
            for n in sizes:
                task: tuple[str, int, int, int] = ("pop", t, 0, n)
                r = replica.run(task)
                rows.append((1.0, float(n), float(r["lengths"].sum()), float(r["lengths"].max())))
                took.append(seconds(partial(replica.run, task), 7, budget_s=0.3, fastest=True))
    finally:
        replica.step_cap = full
    a, y = np.array(rows), np.array(took)
    task_s, member, row, call = _nonnegative_fit(a / y[:, None], np.ones(len(y)))
    return task_s, member, row, call, replica.run(("pop", t, 0, min(16, pop)))


def _nonnegative_fit(a: np.ndarray, b: np.ndarray) -> list[float]:
    """argmin |a x - b| over x >= 0, exactly: the best least-squares fit over the subsets of columns whose fit is
    non-negative (a handful of columns here)."""
    k = a.shape[1]
    best, out = np.inf, [0.0] * k
    for mask in range(1, 1 << k):
        cols = [j for j in range(k) if mask >> j & 1]
        x, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
        if (x < 0).any():
            continue
        r = float(np.linalg.norm(a[:, cols] @ x - b))
        if r < best:
            best, out = r, [0.0] * k
            for j, v in zip(cols, x, strict=True):
                out[j] = float(v)
    return out


def rl_costs(setup: Any, optim: Any, spec: envs.EnvSpec, seed: int, envs_per_worker: int,
             budget_s: float = 2.0) -> CostModel:
    """RL: the env step, one acting forward over a worker's envs, the optimizer step on the whole vector, a
    copy of it, and an update's gradient: worker 0 of a scratch setup steps against a scratch store (the run's
    own workers and shared memories are untouched) until 16 of its steps made updates; the median of what those
    steps took per update beyond acting, copying and applying is the update's cost (steps differ in their work, so
    not the least: that priced simulated updates/s 1.2-1.3x the processes backend's in sim_validation). The fixed
    operations (env step, forward, optimizer step, copy, framing) are the fastest of their timings, as ES's are
    (`_task_fit`): the machine's own cost, with the least that other processes on a shared machine add. Messages:
    the parameter server's framing."""
    from esrl.rl import nets
    from esrl.rl import optim as rl_optim
    from esrl.stores.simulated import SimStore

    step_s = env_step_s(spec, seed)
    model = setup.build_model()
    params = nets.get_flat(model)
    x = torch.zeros(envs_per_worker, spec.obs_dim)
    with torch.no_grad():
        call = seconds(lambda: model(x), 21, fastest=True)
    p = params.detach().float().clone()
    g = torch.full_like(p, 1e-3)
    st = optim.init_state(p.numel())
    apply = seconds(lambda: rl_optim.apply(optim, p, g, st, 1), 21, fastest=True)
    out = torch.empty_like(p)
    copy = seconds(lambda: out.copy_(p), 21, fastest=True)

    store = SimStore(params, optim, "lock")
    worker = setup.build_worker(0, store.client(0, direct=True))
    extra: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(extra) < 16 and time.perf_counter() < deadline:
        t0 = time.perf_counter()
        rep = worker.step()
        took = time.perf_counter() - t0
        if rep.updates:
            acting = rep.env_steps * step_s + rep.env_steps / envs_per_worker * call
            extra.append(max(0.0, (took - acting) / rep.updates - copy - apply))
    update = float(np.median(extra)) if extra else 0.0
    source = "calibrated" if extra else f"calibrated (no update within {budget_s:g} s, e.g. learning_starts: update_s 0)"
    n = p.numel()
    raw = np.ones(n, np.float32)
    framing = seconds(lambda: torch.from_numpy(np.frombuffer(raw.tobytes(), np.float32).copy()), 21,
                      fastest=True) / 2
    per_byte = byte_s()
    fixed = max(0.0, framing - 4 * n * per_byte)
    return CostModel(env_step_s=step_s, call_s=call, update_s=update, apply_s=apply, copy_s=copy, byte_s=per_byte,
                     message_s={"parameters": fixed, "gradients": fixed, "requests": fixed}, source=source)


def es_work(costs: CostModel) -> Any:
    """Seconds of an ES task's result: the task's and each member's fixed costs, each member's env steps, and one
    batched step while any member runs."""
    def work(result: dict[str, Any]) -> float:
        lengths = result["lengths"]
        if not len(lengths):
            return 0.0
        return (costs.task_s + len(lengths) * costs.member_s + float(lengths.sum()) * costs.row_step_s
                + float(lengths.max()) * costs.call_s)

    return work


def es_run_all(replica: Any, tasks: list[Any]) -> list[dict[str, Any]]:
    """The results of an iteration's tasks from one batched evaluation of their whole member range.

    A member's episode is a function of (seed, t, member) alone, whoever evaluates it with whichever
    others (order-free ES, `tests/test_determinism.py`), so each task's slice is the result that task
    would have had, and pickles to the same bytes. Many logical workers each holding a few members
    would otherwise cost the real process one small batch per task."""
    if not tasks:
        return []
    kind, t = tasks[0][0], tasks[0][1]
    lo, hi = min(task[2] for task in tasks), max(task[3] for task in tasks)
    whole = replica.run((kind, t, lo, hi))
    out = []
    for _, _, a, b in tasks:
        obs = [o for o in whole["obs"] if a <= o[0] < b]
        out.append({"kind": kind, "lo": a, "returns": whole["returns"][a - lo : b - lo].copy(),
                    "lengths": whole["lengths"][a - lo : b - lo].copy(), "obs": obs})
    return out


def rl_work(costs: CostModel, envs_per_worker: int) -> Any:
    """Seconds of an RL step's report: its env steps, one acting forward per `envs_per_worker` of them, its
    updates (Dyna-Q's planners are priced at the actor's update, world-model step included)."""
    def work(report: Any) -> float:
        return (report.env_steps * costs.env_step_s + report.env_steps / envs_per_worker * costs.call_s
                + report.updates * costs.update_s)

    return work


def eval_step_s(costs: CostModel, es: bool, episodes: int) -> float:
    """Virtual seconds per evaluation env step (episodes are played together, one forward per step)."""
    return (costs.row_step_s if es else costs.env_step_s) + costs.call_s / max(1, episodes)
