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
    """Seconds per step of the lean env loop, random actions (seeded), resets included."""
    env = envs.lean(envs.make_env(spec))
    space = env.action_space
    space.seed(seeding.derive_int(seed, "sim_calibrate"))
    env.reset(seed=seeding.derive_int(seed, "sim_calibrate"))
    actions = [space.sample() for _ in range(256)]
    done, t0 = 0, time.perf_counter()
    while done < steps and (done < 100 or time.perf_counter() - t0 < budget_s):
        _, _, term, trunc, _ = env.step(actions[done % 256])
        done += 1
        if term or trunc:
            env.reset()
    out = (time.perf_counter() - t0) / done
    env.close()
    return out


def byte_s() -> float:
    """One side of (de)serialising one byte: half a pickle round trip of a 4 MB array, per byte."""
    a = np.ones(_BIG, np.float32)
    return seconds(lambda: pickle.loads(pickle.dumps(a, _DUMP))) / 2 / a.nbytes


def message_s(bodies: dict[str, Any], per_byte: float) -> dict[str, float]:
    """Fixed cost, one side, of pickling each message kind: half a round trip less its bytes' share."""
    out = {}
    for kind, body in bodies.items():
        data = pickle.dumps((kind, body), _DUMP)
        side = seconds(partial(_round_trip, (kind, body))) / 2
        out[kind] = max(0.0, side - len(data) * per_byte)
    return out


def _round_trip(msg: Any) -> Any:
    return pickle.loads(pickle.dumps(msg, _DUMP))


def es_costs(replica: Any, spec: envs.EnvSpec, seed: int) -> CostModel:
    """ES: a member's env step and a task's batched step, fitted over tasks of 1 to 64 members of the replica's
    current iteration (evaluating changes no state); its update; its messages."""
    from esrl.es import algorithm as es

    t, pop = replica.iteration, replica.cfg.population
    row, call, rb = _task_fit(replica, t, pop)
    state = replica.get_state()
    shaped = np.where(np.arange(pop) % 2 == 0, 0.5, -0.5).astype(np.float32)
    update = es.Update(t, shaped, None, None, 0.0, replica.step_cap, pop)

    def apply_once() -> None:
        replica.apply(update)
        replica.set_state(state)

    apply = max(0.0, seconds(apply_once, 5) - seconds(lambda: replica.set_state(state), 5))
    per_byte = byte_s()
    bodies = {"task": (0, ("pop", t, 0, min(16, pop))), "result": (0, rb, 0.0), "apply": update,
              "digest": replica.digest(), "state": state}
    return CostModel(env_step_s=env_step_s(spec, seed), row_step_s=row, call_s=call, apply_s=apply,
                     byte_s=per_byte, message_s=message_s(bodies, per_byte))


def _task_fit(replica: Any, t: int, pop: int) -> tuple[float, float, dict[str, Any]]:
    """(row, call) with a task's seconds = its members' env steps * row + its longest episode * call: a least-squares
    fit, in relative error, over tasks of 1, 2, 4, ... members up to 64 (or the population), each timed as the
    median of a few runs: a fit through two tasks (1 and 16 members, as before) moved a lot from one run to the
    next on a noisy machine. Also the result of a 16-member task (its message size)."""
    sizes = sorted({min(n, pop) for n in (1, 2, 4, 8, 16, 32, 64)})
    replica.run(("pop", t, 0, max(sizes)))  # builds the envs
    rows, took = [], []
    for n in sizes:
        task: tuple[str, int, int, int] = ("pop", t, 0, n)
        r = replica.run(task)
        rows.append((float(r["lengths"].sum()), float(r["lengths"].max())))
        took.append(seconds(partial(replica.run, task), 5, budget_s=0.3))
    a, y = np.array(rows), np.array(took)
    (row, call), *_ = np.linalg.lstsq(a / y[:, None], np.ones(len(y)), rcond=None)
    if row < 0 or call < 0:  # one term explains it: per step of the batch, or per member step
        by_call, by_row = float(np.median(y / a[:, 1])), float(np.median(y / a[:, 0]))
        row, call = (0.0, by_call) if row < 0 else (by_row, 0.0)
    return float(row), float(call), replica.run(("pop", t, 0, min(16, pop)))


def rl_costs(setup: Any, optim: Any, spec: envs.EnvSpec, seed: int, envs_per_worker: int,
             budget_s: float = 2.0) -> CostModel:
    """RL: the env step, one acting forward over a worker's envs, the optimizer step on the whole vector, a
    copy of it, and an update's gradient: worker 0 of a scratch setup steps against a scratch store (the run's
    own workers and shared memories are untouched) until 8 of its steps made updates; what those steps took
    beyond acting, copying and applying is the update's cost. Messages: the parameter server's framing."""
    from esrl.rl import nets
    from esrl.rl import optim as rl_optim
    from esrl.stores.simulated import SimStore

    step_s = env_step_s(spec, seed)
    model = setup.build_model()
    params = nets.get_flat(model)
    x = torch.zeros(envs_per_worker, spec.obs_dim)
    with torch.no_grad():
        call = seconds(lambda: model(x), 21)
    p = params.detach().float().clone()
    g = torch.full_like(p, 1e-3)
    st = optim.init_state(p.numel())
    apply = seconds(lambda: rl_optim.apply(optim, p, g, st, 1), 21)
    out = torch.empty_like(p)
    copy = seconds(lambda: out.copy_(p), 21)

    store = SimStore(params, optim, "lock")
    worker = setup.build_worker(0, store.client(0, direct=True))
    extra: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(extra) < 8 and time.perf_counter() < deadline:
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
    framing = seconds(lambda: torch.from_numpy(np.frombuffer(raw.tobytes(), np.float32).copy()), 21) / 2
    per_byte = byte_s()
    fixed = max(0.0, framing - 4 * n * per_byte)
    return CostModel(env_step_s=step_s, call_s=call, update_s=update, apply_s=apply, copy_s=copy, byte_s=per_byte,
                     message_s={"parameters": fixed, "gradients": fixed, "requests": fixed}, source=source)


def es_work(costs: CostModel) -> Any:
    """Seconds of an ES task's result: each member's env steps, and one batched step while any member runs."""
    def work(result: dict[str, Any]) -> float:
        lengths = result["lengths"]
        if not len(lengths):
            return 0.0
        return float(lengths.sum()) * costs.row_step_s + float(lengths.max()) * costs.call_s

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
