"""A scaling model fitted to measured runs and extrapolated to thousands of workers; it can be wrong.

Per arm, from the sweep's runs:
  c      worker compute seconds per training env step (all workers' compute / env steps);
  W(n)   env steps to the (confirmed) target, fitted per worker count as W1 n^k (k >= 0) where
         solves at two or more worker counts exist, else constant (the report prints which);
  m(n)   messages per env step, m0 + m1 n;
  b(n)   bytes per env step. RL: b0 + b1 n, fitted. ES: built from its message format, per
         iteration n f_w + (P + E) f_m + 4 n P bytes (E: evaluation episodes sent to workers, 0
         since the coordinator plays evaluations; f_w: task, digest and the fixed part of
         the broadcast, per worker; f_m: a result, per episode; 4 n P: every worker receives
         every one of the P shaped returns as a float32), over P L training env steps;
  k      tasks per iteration: ES hands out ranges of at least 2 members and one evaluation
         episode each, so an iteration holds at most P/2 + E tasks; the RL workers run their own
         loops, unbounded.
A hub link of bandwidth B (x shards for a sharded parameter server) carries all traffic, and
each message costs latency L on its worker:
  T(n) = W(n) [max(c / min(n, k), w(n) / B) + m(n) L / n],   S(n) = T(1) / T(n),
where w(n) is b(n) on the wire: TCP/IPv4 on Ethernet, its segment headers and ACKs, as in the
simulator (`sim.framing.Framing`, the m(n) messages of a step taken as equal in size).
`grow=True` is the paper's setting for ES: the population grows with the workers,
P(n) = P n / n_ref (n_ref: the largest measured worker count), so the broadcast per iteration
grows as n P(n); W stays as fitted (an assumption: larger populations may need more steps).
At the measured points the model is checked against this machine (no hub: compute plus the
measured wait per message) and the residuals are reported.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from esrl import config
from esrl.sim.framing import ETHERNET

SHAPED_RETURN_BYTES = 4.0  # one float32 per member in an ES broadcast
BAND_GBIT = (0.1, 100.0)  # the sensitivity band of the extrapolation
BAND_SHARDS = (1, 16)  # parameter-server arms: shards multiply the hub's bandwidth
N_MAX = 4096


def _linear(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares y = a + b x with b >= 0 (one x: the mean, flat)."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if len(set(xs)) < 2:
        return float(y.mean()), 0.0
    b, a = np.polyfit(x, y, 1)
    if b < 0:
        return float(y.mean()), 0.0
    return float(a), float(b)


def _steps_fit(runs: list[Any], target: float | None) -> dict[str, Any]:
    """W(n): medians of confirmed solves per worker count and the power law through them."""
    by_n: dict[int, list[int]] = {}
    for r in runs:
        if r.solved:
            by_n.setdefault(r.workers, []).append(r.steps_to_threshold(target))
    measured = {n: float(np.median(v)) for n, v in sorted(by_n.items())}
    if len(measured) >= 2:
        x, y = np.log(list(measured)), np.log(list(measured.values()))
        k_fit, a = (float(v) for v in np.polyfit(x, y, 1))
        clamped = k_fit < -1e-6
        k = 0.0 if clamped else max(0.0, k_fit)
        a = float(np.mean(y)) if clamped else a
        basis = (f"W(n) = {math.exp(a):.3g} n^{k:.2f}, fitted to confirmed solves at {len(measured)} worker counts"
                 + (f" (fitted exponent {k_fit:.2f} < 0 clamped to 0: more workers are not assumed to need fewer "
                    "steps)" if clamped else ""))
        return {"measured": measured, "w1": math.exp(a), "exponent": k, "exponent_fitted": float(k_fit),
                "basis": basis}
    if measured:
        (only, w), = measured.items()
        return {"measured": measured, "w1": w, "exponent": 0.0, "exponent_fitted": None,
                "basis": f"W = {w:.3g} measured at {only} worker(s) only, assumed the same at every worker count"}
    w = float(np.median([r.env_steps for r in runs])) if runs else 0.0
    return {"measured": {}, "w1": w, "exponent": 0.0, "exponent_fitted": None,
            "basis": f"no confirmed solve: W = {w:.3g}, the env steps the budget allowed (a lower bound)"}


def _es_traffic(runs: list[Any]) -> dict[str, float]:
    """f_w, f_m, P, E and L from ES runs' bytes by kind.

    The per-member part of a broadcast is the message format's (one float32 shaped return per
    member, `es.Update`), also where a backend serialized nothing (serial): a cluster must send
    it. What a worker's broadcast measured beyond that (observation-statistics delta, header)
    is per worker and does not grow with the population.
    """
    fw, fm, bcast, pops, evals, lens = [], [], [], [], [], []
    for r in runs:
        es_cfg, run_cfg = r.config.get("es", {}), r.config.get("run", {})
        pop = int(es_cfg.get("population", config.ESConfig().population))
        # the coordinator plays evaluations itself (esrl.protocol): no tasks, no result bytes; runs
        # from before evaluation was counted apart sent them to the workers on the configured schedule
        n_eval = 0.0 if r.eval_episodes_per_iteration() is not None else None
        if n_eval is None:
            n_eval = run_cfg.get("eval_episodes", config.RunConfig().eval_episodes) / max(1, run_cfg.get("eval_every",
                                                                                                        1))
        iters = max(1, len(r.metrics))
        apply = sum(m.get("bytes_sent", {}).get("apply", 0) for m in r.metrics)
        result = sum(m.get("bytes_received", {}).get("result", 0) for m in r.metrics)
        total = r.bytes_running()
        bcast.append(apply / (iters * r.workers))
        fm.append(result / (iters * (pop + n_eval)))
        fw.append(max(0.0, total - apply - result) / (iters * r.workers))
        pops.append(pop)
        evals.append(n_eval)
        lens.append(r.env_steps / (iters * pop))
    a_w, p_med = float(np.median(bcast)), float(np.median(pops))
    return {"population": p_med, "eval_episodes": float(np.median(evals)),
            "steps_per_member": float(np.median(lens)),
            "bytes_per_worker_iteration": float(np.median(fw)) + max(0.0, a_w - SHAPED_RETURN_BYTES * p_med),
            "bytes_per_episode": float(np.median(fm)), "broadcast_bytes_per_member": SHAPED_RETURN_BYTES,
            "broadcast_measured_per_worker": a_w}


def fit(spec: dict[str, Any], records: list[Any], target: float | None = None) -> dict[str, dict[str, Any]]:
    """One fit per arm with finished runs."""
    out = {}
    for arm in spec["algos"]:
        runs = [r for r in records if r.arm == arm and r.status == "ok" and r.metrics]
        if not runs:
            continue
        steps = [max(1, r.env_steps) for r in runs]
        compute = sum(sum(m.get("compute_s", 0.0) for m in r.metrics) for r in runs)
        msgs_per_run = [sum(m.get("messages", 0) for m in r.metrics) for r in runs]
        wait = sum(sum(m.get("wait_s", 0.0) for m in r.metrics) for r, k in zip(runs, msgs_per_run, strict=True) if k)
        m0, m1 = _linear([r.workers for r in runs], [k / s for k, s in zip(msgs_per_run, steps, strict=True)])
        f: dict[str, Any] = {
            "arm": arm, "kind": "es" if runs[0].algo == "es" else "rl",
            "compute_s_per_step": compute / sum(steps), "messages_per_step": m0, "messages_per_step_per_worker": m1,
            "workers_measured": sorted({r.workers for r in runs}),
            "measured_s_per_message": wait / sum(msgs_per_run) if sum(msgs_per_run) else 0.0,
            "bytes_per_message": sum(r.bytes_running() for r in runs) / max(1, sum(msgs_per_run)),
            "transport": runs[0].transport, "sync": runs[0].sync, "shards": 1,
            "steps_to_threshold": _steps_fit(runs, target)}
        if f["kind"] == "es":
            f.update(_es_traffic(runs))
        else:
            b0, b1 = _linear([r.workers for r in runs], [r.bytes_running() / s for r, s in zip(runs, steps,
                                                                                              strict=True)])
            f.update({"bytes_per_step": b0, "bytes_per_step_per_worker": b1})
            if runs[0].sync == "param-server":
                f["shards"] = int(runs[0].config.get(runs[0].algo, {}).get("shards", 1))
        f["residuals"] = residuals(f, runs)
        out[arm] = f
    return out


# --- predictions ------------------------------------------------------------------------------

def steps_at(f: dict[str, Any], n: np.ndarray) -> np.ndarray:
    w = f["steps_to_threshold"]
    return np.asarray(w["w1"] * np.asarray(n, float) ** w["exponent"], float)


def population_at(f: dict[str, Any], n: np.ndarray, grow: bool) -> np.ndarray:
    n = np.asarray(n, float)
    if not grow:
        return np.full_like(n, f["population"])
    return np.maximum(2.0, f["population"] * n / max(f["workers_measured"]))


def tasks_at(f: dict[str, Any], n: np.ndarray, grow: bool = False) -> np.ndarray:
    """Tasks one iteration holds: ES ranges of at least 2 members plus one per evaluation episode."""
    if f["kind"] != "es":
        return np.full(np.shape(n), np.inf)
    return np.ceil(population_at(f, n, grow) / 2) + np.ceil(f["eval_episodes"])


def bytes_per_iteration(f: dict[str, Any], n: np.ndarray, population: np.ndarray | float) -> np.ndarray:
    """ES: task/digest per worker, one result per episode, every shaped return to every worker."""
    n, p = np.asarray(n, float), np.asarray(population, float)
    return (n * f["bytes_per_worker_iteration"] + (p + f["eval_episodes"]) * f["bytes_per_episode"]
            + n * p * f["broadcast_bytes_per_member"])


def bytes_per_step(f: dict[str, Any], n: np.ndarray, grow: bool = False) -> np.ndarray:
    n = np.asarray(n, float)
    if f["kind"] != "es":
        return f["bytes_per_step"] + f["bytes_per_step_per_worker"] * n
    p = population_at(f, n, grow)
    return bytes_per_iteration(f, n, p) / (p * max(f["steps_per_member"], 1e-12))


def messages_per_step(f: dict[str, Any], n: np.ndarray, grow: bool = False) -> np.ndarray:
    n = np.asarray(n, float)
    if grow and f["kind"] == "es":  # messages per iteration grow with the workers, as do env steps per iteration
        n = np.full_like(n, max(f["workers_measured"]))
    return f["messages_per_step"] + f["messages_per_step_per_worker"] * n


def predict_time(f: dict[str, Any], n: np.ndarray, bandwidth: float, latency: float, grow: bool = False,
                 shards: int | None = None) -> np.ndarray:
    """T(n) in seconds through a hub of `bandwidth` bytes/s (times the shards of a parameter server)."""
    n = np.asarray(n, float)
    link = bandwidth * (shards if shards is not None else f.get("shards", 1))
    w = steps_at(f, n)
    compute = f["compute_s_per_step"] / np.minimum(n, tasks_at(f, n, grow))
    payload, messages = bytes_per_step(f, n, grow), messages_per_step(f, n, grow)
    wire = ETHERNET.wire_bytes(payload, messages) + ETHERNET.ack_bytes(payload, messages)
    with np.errstate(divide="ignore", invalid="ignore"):
        traffic = wire / link
    return np.asarray(w * (np.maximum(compute, traffic) + messages * latency / n), float)


def predict_speedup(f: dict[str, Any], n: np.ndarray, bandwidth: float, latency: float, grow: bool = False,
                    shards: int | None = None) -> np.ndarray:
    one = predict_time(f, np.ones(1), bandwidth, latency, grow, shards)
    return np.asarray(one / predict_time(f, n, bandwidth, latency, grow, shards), float)


def band(f: dict[str, Any], n: np.ndarray, latency: float, grow: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Min and max speedup over bandwidths 0.1-100 Gbit/s (and 1-16 shards for a parameter server)."""
    shards = BAND_SHARDS if f.get("sync") == "param-server" else (f.get("shards", 1),)
    s = np.array([predict_speedup(f, n, g * 1e9 / 8, latency, grow, k)
                  for g in np.geomspace(*BAND_GBIT, 7) for k in shards])
    return s.min(axis=0), s.max(axis=0)


def predict_here(f: dict[str, Any], n: np.ndarray) -> np.ndarray:
    """T(n) on the measuring machine: no hub, each message costs the wait measured per message here."""
    n = np.asarray(n, float)
    return steps_at(f, n) * (f["compute_s_per_step"] / np.minimum(n, tasks_at(f, n))
                             + messages_per_step(f, n) * f["measured_s_per_message"] / n)


def residuals(f: dict[str, Any], runs: list[Any]) -> list[dict[str, Any]]:
    """Measured median time-to-threshold against the model on this machine, per measured worker count."""
    out = []
    for n in sorted({r.workers for r in runs}):
        t = float(np.median([r.ttt for r in runs if r.workers == n]))
        if not math.isfinite(t):
            continue
        model_t = float(predict_here(f, np.array([float(n)]))[0])
        out.append({"workers": n, "measured_s": t, "model_s": model_t, "residual_s": t - model_t,
                    "relative": (t - model_t) / t if t > 0 else math.nan})
    return out


def _leader(fa: dict[str, Any], fb: dict[str, Any], n: np.ndarray, bandwidth: float, latency: float) -> np.ndarray:
    """+1 where arm a is faster in the model, -1 where b is, 0 where they tie (within 1e-9)."""
    ta, tb = predict_time(fa, n, bandwidth, latency), predict_time(fb, n, bandwidth, latency)
    return np.where(np.isclose(ta, tb, rtol=1e-9, atol=0), 0, np.sign(tb - ta)).astype(int)


def crossover(fa: dict[str, Any], fb: dict[str, Any], bandwidth: float, latency: float) -> int | None:
    """The first worker count (1..N_MAX) where the faster of two arms in the model changes (ties skipped)."""
    n = np.arange(1, N_MAX + 1, dtype=float)
    lead = _leader(fa, fb, n, bandwidth, latency)
    strict = np.nonzero(lead)[0]
    if strict.size == 0:
        return None
    flips = strict[lead[strict] != lead[strict[0]]]
    return int(n[flips[0]]) if flips.size else None


def crossovers(fits: dict[str, dict[str, Any]], ref: str, bandwidth: float, latency: float
               ) -> dict[str, dict[str, Any]]:
    """For every arm against the reference: the model's crossover and its range over the bandwidth band."""
    out: dict[str, dict[str, Any]] = {}
    if ref not in fits:
        return out
    for arm, f in fits.items():
        if arm == ref:
            continue
        at = crossover(fits[ref], f, bandwidth, latency)
        over = [crossover(fits[ref], f, g * 1e9 / 8, latency) for g in np.geomspace(*BAND_GBIT, 7)]
        found = [x for x in over if x is not None]
        lead = _leader(fits[ref], f, np.arange(1, N_MAX + 1, dtype=float), bandwidth, latency)
        strict = lead[lead != 0]
        first, second = (ref, arm) if strict.size and strict[0] > 0 else (arm, ref)
        hub = f"{bandwidth * 8 / 1e9:.3g} Gbit/s hub, {latency * 1e6:.0f} us per message"
        if at is not None:
            text = f"the model ({hub}) puts the crossover at {at} workers ({first} faster below, {second} above)"
        elif strict.size:
            text = (f"the model ({hub}) has {first} faster at every count from 1 to {N_MAX}"
                    + (" where they differ" if strict.size < lead.size else ""))
        else:
            text = f"the model ({hub}) cannot tell the two apart from 1 to {N_MAX} workers"
        if found:
            span = f"{min(found)}" if min(found) == max(found) else f"{min(found)}-{max(found)}"
            text += (f"; over {BAND_GBIT[0]:g}-{BAND_GBIT[1]:g} Gbit/s a crossover appears at {span} workers "
                     f"({len(found)} of {len(over)} bandwidths)")
        else:
            text += f"; no crossover at any bandwidth in {BAND_GBIT[0]:g}-{BAND_GBIT[1]:g} Gbit/s"
        bounds = [a for a in (ref, arm) if not fits[a]["steps_to_threshold"]["measured"]]
        if bounds:
            text += (f" (with no confirmed solve of {' or '.join(bounds)}, W is only the budget's env steps, a "
                     "lower bound)")
        measured_n = sorted(set(fits[ref]["workers_measured"]) | set(f["workers_measured"]))
        lead_at = _leader(fits[ref], f, np.array(measured_n, float), bandwidth, latency)
        faster_at = {n: (ref if x > 0 else arm) if x else None for n, x in zip(measured_n, lead_at, strict=True)}
        out[arm] = {"workers": at, "band": [min(found), max(found)] if found else None, "text": text,
                    "faster_at": faster_at}
    return out


def plot(fits: dict[str, dict[str, Any]], rows: list[dict[str, Any]], path: Path, bandwidth: float,
         latency: float) -> Path:
    from esrl.experiments.plots import fig, legend, log2_workers, save

    f_, ax = fig(f"Scaling model: {bandwidth * 8 / 1e9:.3g} Gbit/s hub, {latency * 1e6:.0f} us/message; "
                 f"band {BAND_GBIT[0]:g}-{BAND_GBIT[1]:g} Gbit/s", "workers (log2)", "speedup S(n) (log2)")
    n = np.unique(np.logspace(0, math.log2(N_MAX), 160, base=2).astype(int)).astype(float)
    ax.plot(n, n, "k--", lw=1, label="ideal")
    for i, (arm, f) in enumerate(fits.items()):
        color = f"C{i}"
        ax.plot(n, predict_speedup(f, n, bandwidth, latency), color=color, label=f"{arm}: model")
        lo, hi = band(f, n, latency)
        ax.fill_between(n, lo, hi, color=color, alpha=0.12, lw=0)
        if f["kind"] == "es":
            ax.plot(n, predict_speedup(f, n, bandwidth, latency, grow=True), color=color, ls=":",
                    label=f"{arm}: model, population grows with workers")
        pts = [r for r in rows if r["arm"] == arm and r.get("speedup") is not None and math.isfinite(r["speedup"])
               and r["speedup"] > 0]
        if pts:
            y = np.array([r["speedup"] for r in pts])
            err = [np.clip(y - np.array([r["speedup_lo"] for r in pts]), 0, None),
                   np.clip(np.array([r["speedup_hi"] for r in pts]) - y, 0, 10 * y)]
            ax.errorbar([r["workers"] for r in pts], y, yerr=err, fmt="o", color=color, capsize=3, zorder=3,
                        label=f"{arm}: measured")
    log2_workers(ax, [int(x) for x in (1, 16, 256, N_MAX)])
    ax.set_yscale("log", base=2)
    legend(ax, fontsize=6)
    return save(f_, path)


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def describe(fits: dict[str, dict[str, Any]], bandwidth: float, latency: float) -> str:
    lines = [f"## Scaling model ({bandwidth * 8 / 1e9:.3g} Gbit/s hub, {latency * 1e6:.0f} us per message)", "",
             "T(n) = W(n) [max(c / min(n, k), b(n) / B) + m(n) L / n], fitted per arm (c: compute per env step; "
             "k: tasks per iteration, beyond which workers add no compute speedup; b(n), m(n): bytes and messages "
             "per env step; W(n): env steps to the confirmed target). ES's b(n) follows its message format: per "
             "iteration every worker receives every shaped return (4 bytes each), so its broadcast grows as "
             "workers x population. 'population grows with workers' is the paper's setting: P(n) = P n / n_ref, "
             "with W as fitted (an assumption). Lock and hogwild keep the model in one machine's shared memory; "
             "past one machine the model moves their measured bytes through the hub as if they were messages. "
             "The shaded bands on the plot span hub bandwidths of "
             f"{BAND_GBIT[0]:g}-{BAND_GBIT[1]:g} Gbit/s (and {BAND_SHARDS[0]}-{BAND_SHARDS[1]} shards for "
             "parameter-server arms).", "",
             "| arm | compute us/step | tasks/iteration | bytes/env step at n=1 (n=64) | bytes/message | wait per "
             "message here (us) | S(64) | S(1024) | S(4096) | S(4096) over 0.1-100 Gbit/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, f in fits.items():
        for grow in (False, True) if f["kind"] == "es" else (False,):
            s = predict_speedup(f, np.array([64.0, 1024.0, 4096.0]), bandwidth, latency, grow)
            lo, hi = band(f, np.array([4096.0]), latency, grow)
            k = tasks_at(f, np.ones(1), grow)[0]
            b1, b64 = bytes_per_step(f, np.array([1.0, 64.0]), grow)
            lines.append(f"| {arm}{', population grows' if grow else ''} | {_fmt(f['compute_s_per_step'] * 1e6)} | "
                         f"{'grows' if grow else ('unbounded' if math.isinf(k) else f'{k:.0f}')} | {_fmt(b1)} "
                         f"({_fmt(b64)}) | {_fmt(f['bytes_per_message'])} | "
                         f"{_fmt(f['measured_s_per_message'] * 1e6)} | {_fmt(s[0])} | {_fmt(s[1])} | {_fmt(s[2])} | "
                         f"{_fmt(lo[0])} - {_fmt(hi[0])} |")
    lines += ["", "Env steps to the target, W(n):", ""]
    lines += [f"- {arm}: {f['steps_to_threshold']['basis']}" for arm, f in fits.items()]
    es_arms = [(arm, f) for arm, f in fits.items() if f["kind"] == "es"]
    if es_arms:
        lines += ["", "ES broadcast per worker and iteration, measured against the message format (4 bytes x P "
                  "shaped returns; the model uses the format, plus what was measured beyond it):", ""]
        lines += [f"- {arm}: measured {_fmt(f['broadcast_measured_per_worker'])} B, format "
                  f"{_fmt(SHAPED_RETURN_BYTES * f['population'])} B (P = {f['population']:.0f})" for arm, f in es_arms]
    lines += ["", "Residuals at the measured points (this machine: no hub, compute plus the wait measured per "
              "message; the model omits start-up, so a positive residual is time it does not explain):", "",
              "| arm | workers | measured median T (s) | model T (s) | residual (s) | relative |", "|---|---|---|---|---|---|"]
    for arm, f in fits.items():
        for r in f["residuals"]:
            lines.append(f"| {arm} | {r['workers']} | {_fmt(r['measured_s'])} | {_fmt(r['model_s'])} | "
                         f"{_fmt(r['residual_s'])} | {_fmt(100 * r['relative'])}% |")
        if not f["residuals"]:
            lines.append(f"| {arm} | - | not solved | - | - | - |")
    return "\n".join(lines)
