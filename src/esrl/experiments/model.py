"""A scaling model fitted to measured runs, extrapolated to thousands of workers.

Per algorithm, from the sweep's runs:
  c      worker compute seconds per env step (all workers' compute / env steps);
  b(n)   bytes moved per env step with n workers (fitted as b0 + b1 n: ES's per-iteration
         messages grow with n, A3C's gradients and parameters do not depend on it);
  m(n)   messages per env step, fitted the same way;
  W      env steps to reach the threshold (median over solved runs).
With a hub link of bandwidth B (bytes/s) that all traffic crosses and a per-message latency
L, a run with n workers takes T(n) = max(W c / n, W b(n) / B) + W m(n) L / n: compute spreads
over the workers, traffic through the hub does not. Speedup S(n) = T(1) / T(n).

Two regimes: `fixed` keeps the measured batch (ES population) while workers grow, so each
added worker adds its own per-iteration messages to the same env steps; `weak` grows the
batch with the workers (the paper's setting: population proportional to workers), so the
per-worker traffic per env step stays at its value for the largest measured worker count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _linear(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares y = a + b x with b >= 0 (one x: the mean, flat)."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if len(set(xs)) < 2:
        return float(y.mean()), 0.0
    b, a = np.polyfit(x, y, 1)
    if b < 0:
        return float(y.mean()), 0.0
    return float(a), float(b)


def fit(spec: dict[str, Any], records: list[Any]) -> dict[str, dict[str, float]]:
    out = {}
    for algo in spec["algos"]:
        runs = [r for r in records if r.algo == algo and r.status == "ok" and r.metrics]
        if not runs:
            continue
        steps = [r.metrics[-1]["env_steps"] for r in runs]
        compute = sum(sum(m.get("compute_s", 0.0) for m in r.metrics) for r in runs)
        total_steps = max(1, sum(steps))
        per_run_bytes = [sum(m.get("bytes_sent_total", 0) + m.get("bytes_received_total", 0) for m in r.metrics)
                         / max(1, s) for r, s in zip(runs, steps, strict=True)]
        per_run_msgs = [sum(m.get("messages", 0) for m in r.metrics) / max(1, s) for r, s in zip(runs, steps,
                                                                                                   strict=True)]
        b0, b1 = _linear([r.workers for r in runs], per_run_bytes)
        m0, m1 = _linear([r.workers for r in runs], per_run_msgs)
        msgs = sum(sum(m.get("messages", 0) for m in r.metrics) for r in runs)
        total_bytes = sum(sum(m.get("bytes_sent_total", 0) + m.get("bytes_received_total", 0) for m in r.metrics)
                          for r in runs)
        # measured cost of a message here: workers' waiting per message, over runs with more than one worker
        multi = [r for r in runs if r.workers > 1]
        wait = sum(sum(m.get("wait_s", 0.0) for m in r.metrics) for r in multi)
        multi_msgs = sum(sum(m.get("messages", 0) for m in r.metrics) for r in multi)
        solved = [r.summary["env_steps"] for r in runs if r.solved]
        work = float(np.median(solved)) if solved else float(np.median(steps))
        out[algo] = {"compute_s_per_step": compute / total_steps, "bytes_per_step": b0, "bytes_per_step_per_worker": b1,
                     "messages_per_step": m0, "messages_per_step_per_worker": m1, "steps_to_threshold": work,
                     "workers_measured": float(max(r.workers for r in runs)),
                     "bytes_per_message": total_bytes / max(1, msgs),
                     "measured_s_per_message": wait / multi_msgs if multi_msgs else float("nan")}
    return out


def predict_time(f: dict[str, float], n: np.ndarray, bandwidth: float, latency: float, weak: bool = False
                 ) -> np.ndarray:
    w = f["steps_to_threshold"]
    per_worker = np.minimum(n, f["workers_measured"]) if weak else n
    b = f["bytes_per_step"] + f["bytes_per_step_per_worker"] * per_worker
    m = f["messages_per_step"] + f["messages_per_step_per_worker"] * per_worker
    return np.maximum(w * f["compute_s_per_step"] / n, w * b / bandwidth) + w * m * latency / n


def predict_speedup(f: dict[str, float], n: np.ndarray, bandwidth: float, latency: float, weak: bool = False
                    ) -> np.ndarray:
    one = predict_time(f, np.ones(1), bandwidth, latency, weak)
    return one / predict_time(f, n, bandwidth, latency, weak)


def plot(fits: dict[str, dict[str, float]], rows: list[dict[str, Any]], spec: dict[str, Any], path: Path,
         bandwidth: float, latency: float) -> Path:
    from esrl.experiments.report import _fig, _save

    fig, ax = _fig(f"Scaling model: {bandwidth * 8 / 1e9:.3g} Gbit/s hub, {latency * 1e6:.0f} us latency",
                   "workers (log)", "speedup S(n) (log)")
    n = np.unique(np.logspace(0, 12, 200, base=2).astype(int)).astype(float)
    ax.plot(n, n, "k--", lw=1, label="ideal")
    for i, (algo, f) in enumerate(fits.items()):
        ax.plot(n, predict_speedup(f, n, bandwidth, latency), color=f"C{i}", label=f"{algo}: model, fixed batch")
        if f["bytes_per_step_per_worker"] > 0 or f["messages_per_step_per_worker"] > 0:
            ax.plot(n, predict_speedup(f, n, bandwidth, latency, weak=True), color=f"C{i}", ls=":",
                    label=f"{algo}: model, batch grows with workers")
        pts = [(r["workers"], r["speedup"]) for r in rows if r["algo"] == algo and r.get("speedup")]
        if pts:
            x, y = zip(*pts, strict=True)
            ax.scatter(x, y, color=f"C{i}", zorder=3, label=f"{algo}: measured")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.legend(fontsize=7)
    return _save(fig, path)


def describe(fits: dict[str, dict[str, float]], bandwidth: float, latency: float) -> str:
    lines = [f"## Scaling model ({bandwidth * 8 / 1e9:.3g} Gbit/s hub, {latency * 1e6:.0f} us per message)", "",
             "T(n) = max(W c / n, W b(n) / B) + W m(n) L / n, fitted per algorithm from these runs (c: compute per "
             "env step, b(n), m(n): bytes and messages per env step, linear in n; W: env steps to threshold). "
             "'fixed batch' keeps the measured population; 'batch grows with workers' is the paper's setting, "
             "where per-worker traffic per env step stays as measured at the largest worker count. The "
             "prediction uses the chosen latency; the measured wait per message on this machine is shown beside "
             "it (workers' waiting time / messages, runs with more than one worker).", "",
             "| algorithm | regime | compute us/step | bytes/step (+ per worker) | bytes/message | measured wait "
             "per message (us) | predicted S(64) | S(1024) | S(4096) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for algo, f in fits.items():
        for weak in (False, True):
            s = predict_speedup(f, np.array([64.0, 1024.0, 4096.0]), bandwidth, latency, weak)
            lines.append(f"| {algo} | {'batch grows with workers' if weak else 'fixed batch'} | "
                         f"{f['compute_s_per_step'] * 1e6:.3g} | {f['bytes_per_step']:.3g} "
                         f"(+{f['bytes_per_step_per_worker']:.3g}) | {f['bytes_per_message']:.3g} | "
                         f"{f['measured_s_per_message'] * 1e6:.3g} | {s[0]:.3g} | {s[1]:.3g} | {s[2]:.3g} |")
    return "\n".join(lines)
