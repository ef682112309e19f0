"""The scaling model can be wrong: ES's broadcast grows with the population, tasks cap the compute
speedup, steps-to-threshold follow the worker count, and the residuals vanish on data that follows it."""

import math

import numpy as np
import pytest

from esrl.experiments import model
from esrl.experiments.records import RunRecord

TARGET = 475.0
C = 1e-4  # compute seconds per env step
LAT = 1e-3  # wait per message on the measuring machine
POP = 20
ITERS = 10
STEPS_PER_ITER = 1000  # 50 steps per member


def es_run(workers: int, seed: int = 0, steps_to_threshold: int = ITERS * STEPS_PER_ITER) -> RunRecord:
    """An ES run that follows the model exactly: wall = (compute + wait) / n per iteration."""
    lines, wall = [], 0.0
    iters = steps_to_threshold // STEPS_PER_ITER
    for i in range(iters):
        msgs = 4 * workers
        compute, wait = STEPS_PER_ITER * C, msgs * LAT
        wall += (compute + wait) / workers
        lines.append({"iteration": i, "wall_s": wall, "env_steps": STEPS_PER_ITER * (i + 1),
                      "eval_return": TARGET if i == iters - 1 else 10.0,
                      "bytes_sent": {"task": 50 * workers, "apply": workers * (4 * POP + 100)},
                      "bytes_received": {"result": 16 * POP},
                      "bytes_sent_total": 50 * workers + workers * (4 * POP + 100),
                      "bytes_received_total": 16 * POP, "messages": msgs, "compute_s": compute, "wait_s": wait})
    summary = {"solved": True, "confirmed": True, "time_to_threshold_s": wall, "env_steps": STEPS_PER_ITER * iters,
               "episodes": POP * iters, "wall_s": wall, "stop_reason": "solved"}
    cfg = {"algorithm": "es", "es": {"population": POP}, "run": {"eval_episodes": 1, "eval_every": 10**9}}
    return RunRecord(f"es-w{workers}-s{seed}", "es", workers, seed, "ok", summary, lines, cfg)


def rl_run(arm: str, workers: int, steps: int, seed: int = 0, bytes_per_step: float = 80.0) -> RunRecord:
    lines, wall, per_line = [], 0.0, 1000
    for i in range(steps // per_line):
        msgs = 2 * workers
        wall += (per_line * C + msgs * LAT) / workers
        lines.append({"iteration": i, "wall_s": wall, "env_steps": per_line * (i + 1),
                      "eval_return": TARGET if i == steps // per_line - 1 else 10.0,
                      "bytes_sent_total": per_line * bytes_per_step / 2,
                      "bytes_received_total": per_line * bytes_per_step / 2, "messages": msgs,
                      "compute_s": per_line * C, "wait_s": msgs * LAT})
    summary = {"solved": True, "confirmed": True, "time_to_threshold_s": wall, "env_steps": steps,
               "wall_s": wall, "sync": arm.partition(":")[2] or "hogwild", "stop_reason": "solved"}
    return RunRecord(f"{arm}-w{workers}-s{seed}", arm, workers, seed, "ok", summary, lines,
                     {"algorithm": arm.partition(":")[0], "dqn": {"shards": 4}})


def fits_of(records: list[RunRecord], arms: list[str]) -> dict:
    return model.fit({"algos": arms}, records, TARGET)


def es_fit() -> dict:
    return fits_of([es_run(w, s) for w in (1, 2, 4) for s in range(2)], ["es"])["es"]


def test_es_traffic_grows_with_the_population():
    f = es_fit()
    assert f["population"] == POP and f["broadcast_bytes_per_member"] == 4.0
    assert f["bytes_per_worker_iteration"] == pytest.approx(150.0)  # task 50 + broadcast beyond the returns 100
    n = np.array([1000.0])
    b1, b2 = model.bytes_per_iteration(f, n, 1000.0)[0], model.bytes_per_iteration(f, n, 2000.0)[0]
    assert b2 - b1 >= 1000 * 1000 * 4  # every worker receives every extra shaped return
    # the paper's setting: population grows with the workers, so per env step the traffic grows with them too
    b = model.bytes_per_step(f, np.array([64.0, 4096.0]), grow=True)
    assert b[1] / b[0] > 50
    # and at a hub that slow, the growing broadcast ends ES's scaling: no near-linear speedup at 4096
    s = model.predict_speedup(f, np.array([4096.0]), bandwidth=12.5e6, latency=0.0, grow=True)[0]
    assert s < 4096 / 4


def test_workers_beyond_the_tasks_of_an_iteration_add_nothing():
    f = es_fit()
    k = model.tasks_at(f, np.ones(1))[0]
    assert k == POP / 2 + 1  # ranges of at least 2 members, plus the one evaluation episode
    t = model.predict_time(f, np.array([k / 2, k, 2 * k, 4096.0]), bandwidth=math.inf, latency=0.0)
    assert t[0] > t[1] and t[1] == pytest.approx(t[2]) and t[1] == pytest.approx(t[3])
    # RL workers run their own loops: no such cap
    rl = fits_of([rl_run("a3c", w, 8000) for w in (1, 2)], ["a3c"])["a3c"]
    t = model.predict_time(rl, np.array([16.0, 4096.0]), bandwidth=math.inf, latency=0.0)
    assert t[1] < t[0] / 100


def test_residuals_vanish_on_data_that_follows_the_model():
    f = es_fit()
    assert [r["workers"] for r in f["residuals"]] == [1, 2, 4]
    for r in f["residuals"]:
        assert abs(r["relative"]) < 1e-9, r
    rl = fits_of([rl_run("dqn:lock", w, 8000 * w, s) for w in (1, 2, 4) for s in range(2)], ["dqn:lock"])["dqn:lock"]
    for r in rl["residuals"]:
        assert abs(r["relative"]) < 1e-9, r


def test_residuals_show_a_model_that_is_wrong():
    runs = [es_run(w) for w in (1, 2)]
    runs[1].summary["time_to_threshold_s"] *= 3  # start-up the model knows nothing about
    f = fits_of(runs, ["es"])["es"]
    assert f["residuals"][1]["relative"] == pytest.approx(2 / 3)


def test_steps_to_threshold_fitted_per_worker_count():
    rl = fits_of([rl_run("a3c", w, 4000 * w) for w in (1, 2, 4)], ["a3c"])["a3c"]
    w = rl["steps_to_threshold"]
    assert w["measured"] == {1: 4000.0, 2: 8000.0, 4: 16000.0} and w["exponent"] == pytest.approx(1.0)
    assert model.steps_at(rl, np.array([64.0]))[0] == pytest.approx(4000 * 64)
    # W proportional to n: compute time stays flat, the model gives no speedup past the traffic
    assert model.predict_speedup(rl, np.array([64.0]), math.inf, 0.0)[0] == pytest.approx(1.0)
    # fewer steps with more workers is not extrapolated (noise on few seeds would promise superlinear speedups)
    down = fits_of([rl_run("a3c", w, s) for w, s in ((1, 8000), (2, 4000))], ["a3c"])["a3c"]["steps_to_threshold"]
    assert down["exponent"] == 0.0 and down["exponent_fitted"] < 0 and "clamped" in down["basis"]
    one = fits_of([rl_run("a3c", 2, 4000)], ["a3c"])["a3c"]["steps_to_threshold"]
    assert "only" in one["basis"] and one["exponent"] == 0.0


def test_sensitivity_band_and_crossover():
    es = es_fit()
    rl = fits_of([rl_run("dqn:param-server", w, 8000, bytes_per_step=40_000.0) for w in (1, 2)],
                 ["dqn:param-server"])["dqn:param-server"]
    assert rl["shards"] == 4
    n = np.array([64.0, 1024.0])
    for f in (es, rl):
        lo, hi = model.band(f, n, 1e-4)
        mid = model.predict_speedup(f, n, 125e6, 1e-4)
        assert np.all(lo <= mid + 1e-9) and np.all(mid <= hi + 1e-9)
    lo, hi = model.band(rl, n, 1e-4)
    assert hi[1] > 2 * lo[1]  # a bandwidth-bound arm: the band is wide
    # at 1 Gbit/s the RL arm's vectors bind it while ES's scalars do not: a crossover appears in 1..4096
    at = model.crossover(es, rl, 125e6, 0.0)
    assert at is not None and 1 < at < 64
    assert model.predict_time(es, np.array([64.0]), 125e6, 0.0) < model.predict_time(rl, np.array([64.0]), 125e6, 0.0)
    cross = model.crossovers({"es": es, "dqn:param-server": rl}, "es", 125e6, 0.0)["dqn:param-server"]
    assert cross["workers"] == at and "crossover" in cross["text"]
