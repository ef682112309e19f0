"""The report's PNG plots: every worker axis log2, intervals as error bars, the target on the curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def fig(title: str, xlabel: str, ylabel: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return f, ax


def save(f: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    f.tight_layout()
    f.savefig(path)
    plt.close(f)
    return path


def log2_workers(ax: Any, workers: list[int]) -> None:
    from matplotlib.ticker import NullFormatter, NullLocator

    ax.set_xscale("log", base=2)
    ax.set_xticks(workers)
    ax.set_xticklabels([str(w) for w in workers])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    lo, hi = min(workers), max(workers)
    ax.set_xlim(lo / 1.4, hi * 1.4)


def legend(ax: Any, **kw: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _errorbar(ax: Any, rows: list[dict[str, Any]], key: str, label: str, color: str, cap: float = 10.0) -> None:
    pts = [r for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    if not pts:
        return
    base = key.removesuffix("_median")
    y = np.array([r[key] for r in pts])
    lo = np.array([r[f"{base}_lo"] if r.get(f"{base}_lo") is not None and not math.isnan(r[f"{base}_lo"]) else v
                   for r, v in zip(pts, y, strict=True)])
    hi = np.array([r[f"{base}_hi"] if r.get(f"{base}_hi") is not None and not math.isnan(r[f"{base}_hi"]) else v
                   for r, v in zip(pts, y, strict=True)])
    hi = np.minimum(hi, cap * np.maximum(y, 1e-12))  # an unsolved bound (inf) drawn as a long bar
    ax.errorbar([r["workers"] for r in pts], y, yerr=[np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)],
                marker="o", capsize=4, color=color, label=label)


def make(spec: dict[str, Any], rows: list[dict[str, Any]], records: list[Any], out: Path, target: float | None,
         kind: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    workers, arms = list(spec["workers"]), list(spec["algos"])
    colors = {a: f"C{i}" for i, a in enumerate(arms)}
    by_arm = {a: [r for r in rows if r["arm"] == a and "ttt_median" in r] for a in arms}
    paths = []

    f, ax = fig(f"Time to confirmed target vs workers (median, {kind})", "workers (log2)", "time to threshold (s)")
    for a, rs in by_arm.items():
        _errorbar(ax, rs, "ttt_median", a, colors[a])
        for r in rs:
            y = r["ttt_median"] if math.isfinite(r["ttt_median"]) else ax.get_ylim()[0]
            ax.annotate(f"{r['confirmed']}/{r['runs']}", (r["workers"], y), textcoords="offset points",
                        xytext=(4, 6), fontsize=7, color=colors[a])
    log2_workers(ax, workers)
    legend(ax, fontsize=7, title="confirmed solves annotated", title_fontsize=7)
    paths.append(save(f, out / "time_to_threshold.png"))

    base = min(workers)
    for key, title, ideal in (("speedup", "Speedup S(n) = T(fewest)/T(n)", True),
                              ("efficiency", "Efficiency S(n) x fewest / n", False)):
        f, ax = fig(f"{title} vs workers ({kind})", "workers (log2)", key)
        ax.plot(workers, [w / base if ideal else 1.0 for w in workers], "k--", lw=1, label="ideal")
        for a, rs in by_arm.items():
            _errorbar(ax, rs, key, a, colors[a])
        log2_workers(ax, workers)
        legend(ax, fontsize=7)
        paths.append(save(f, out / f"{key}.png"))

    f, ax = fig("Throughput vs workers", "workers (log2)", "env steps per second")
    for a, rs in by_arm.items():
        ax.plot([r["workers"] for r in rs], [r["steps_per_s"] for r in rs], marker="o", color=colors[a], label=a)
    log2_workers(ax, workers)
    legend(ax, fontsize=7)
    paths.append(save(f, out / "steps_per_s.png"))

    for key, title, ylabel in (("bytes_per_env_step", "Traffic per env step", "bytes per env step (log)"),
                               ("bytes_to_threshold", "Traffic to the confirmed target", "bytes to threshold (log)")):
        f, ax = fig(f"{title} vs workers, all arms (transport in brackets)", "workers (log2)", ylabel)
        for a, rs in by_arm.items():
            pts = [r for r in rs if r.get(key) is not None]
            if pts:
                transport = ", ".join(sorted({r["transport"] for r in pts}))
                ax.plot([r["workers"] for r in pts], [max(r[key], 1e-2) for r in pts], marker="o", color=colors[a],
                        ls=":" if "shared-memory" in transport else "-", label=f"{a} [{transport}]")
        ax.set_yscale("log")
        log2_workers(ax, workers)
        legend(ax, fontsize=7, title="dotted: shared-memory copies, not network bytes", title_fontsize=6)
        paths.append(save(f, out / f"{key}.png"))

    for key, title, ylabel in (("bytes_per_iteration", "Traffic per iteration", "bytes per iteration"),
                               ("bytes_per_s", "Traffic per second", "bytes per second")):
        f, ax = fig(title + " vs workers, by kind", "workers (log2)", ylabel + " (log)")
        for a, rs in by_arm.items():
            kinds = sorted({k for r in rs for k, v in r[key].items() if v > 0})  # kinds that moved nothing: omitted
            for k in kinds:
                ax.plot([r["workers"] for r in rs], [max(r[key].get(k, 0.0), 1e-1) for r in rs], marker="o",
                        label=f"{a}: {k}")
        ax.set_yscale("log")
        log2_workers(ax, workers)
        legend(ax, fontsize=6)
        paths.append(save(f, out / f"{key}.png"))

    f, ax = fig("Episodes to the target and time per episode", "workers (log2)", "episodes to threshold (median)")
    ax2 = ax.twinx()
    ax2.set_ylabel("time per episode (ms)")
    for a, rs in by_arm.items():
        ax.plot([r["workers"] for r in rs], [r["episodes_to_threshold"] or np.nan for r in rs], marker="o",
                color=colors[a], label=f"{a}: episodes")
        ax2.plot([r["workers"] for r in rs], [1e3 * r["time_per_episode_s"] for r in rs], marker="s", ls=":",
                 color=colors[a], label=f"{a}: ms/episode")
    log2_workers(ax, workers)
    legend(ax, loc="center left", fontsize=7)
    legend(ax2, loc="center right", fontsize=7)
    paths.append(save(f, out / "episodes.png"))

    styles = {w: s for w, s in zip(workers, ["-", "--", ":", "-."] * 8, strict=False)}
    for xkey, xlabel, fname in (("wall_s", "wall time (s)", "curves_time.png"),
                                ("env_steps", "env steps", "curves_steps.png")):
        f, ax = fig("Learning curves: evaluation return", xlabel, "evaluation return")
        for rec in records:
            curve = np.asarray([(m[xkey], m["eval_return"]) for m in rec.metrics
                                if m.get("eval_return") is not None and m.get(xkey) is not None], float)
            if curve.size:
                ax.plot(curve[:, 0], curve[:, 1], color=colors[rec.arm], ls=styles[rec.workers], lw=1, alpha=0.7,
                        label=f"{rec.arm}, {rec.workers} workers" if rec.seed == 0 else None)
        if target is not None:
            ax.axhline(target, color="k", lw=1, ls="--", label=f"target {target:g}")
        legend(ax, fontsize=6)
        paths.append(save(f, out / fname))
    return paths


def beside(series: list[tuple[str, list[dict[str, Any]]]], models: dict[str, tuple[np.ndarray, np.ndarray]],
           model_label: str, path: Path) -> Path:
    """Speedup vs workers of sweeps side by side: the first (this sweep) solid with markers, the others dashed,
    the closed-form model fitted to the first dash-dotted. `series` holds (label, table rows) per sweep."""
    arms = list(dict.fromkeys(r["arm"] for _, rows in series for r in rows))
    colors = {a: f"C{i}" for i, a in enumerate(arms)}
    workers = sorted({r["workers"] for _, rows in series for r in rows})
    f, ax = fig("Speedup T(fewest)/T(n) beside another sweep", "workers (log2)", "speedup (each sweep's own fewest)")
    for i, (label, rows) in enumerate(series):
        ls = "-" if i == 0 else ["--", ":", (0, (6, 2, 1, 2, 1, 2))][(i - 1) % 3]
        for a in arms:
            pts = [r for r in rows if r["arm"] == a and r.get("speedup") is not None and math.isfinite(r["speedup"])
                   and r["speedup"] > 0]  # 0: unsolved at n, nothing to draw on a speedup axis
            if pts:
                ax.plot([r["workers"] for r in pts], [r["speedup"] for r in pts], ls=ls, marker="o" if i == 0 else "s",
                        mfc=colors[a] if i == 0 else "none", color=colors[a], label=f"{a}: {label}")
    for a, (n, s) in models.items():
        ax.plot(n, s, ls="-.", lw=1, color=colors.get(a, "k"), label=f"{a}: {model_label}")
    log2_workers(ax, workers)
    legend(ax, fontsize=6)
    return save(f, path)
