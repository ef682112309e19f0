"""`esrl report SWEEP_DIR`: the scaling study as report.md, a self-contained report.html and PNG plots.

Every run of the sweep's grid is accounted for: finished runs feed the statistics, runs that
did not reach the threshold count as unsolved (shown, never dropped), and runs that are
missing or whose files are corrupt are listed as such.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from esrl import seeding
from esrl.experiments.sweep import run_name
from esrl.runs.rundir import atomic_write

BOOTSTRAP = 2000


@dataclass
class RunRecord:
    """One run of the grid, as found on disk."""

    name: str
    algo: str
    workers: int
    seed: int
    status: str = "ok"  # ok | missing | unfinished | corrupt: <why>
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def solved(self) -> bool:
        return self.status == "ok" and bool(self.summary.get("solved"))

    @property
    def ttt(self) -> float:
        """Time-to-threshold, +inf when not solved."""
        t = self.summary.get("time_to_threshold_s")
        return float(t) if self.solved and t is not None else math.inf


def load(sweep_dir: str | Path) -> tuple[dict[str, Any], list[RunRecord]]:
    """The sweep spec and one record per run of its grid."""
    d = Path(sweep_dir)
    try:
        spec = json.loads((d / "sweep.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        from esrl.errors import InputError

        raise InputError("sweep_dir", f"{d} has no readable sweep.json ({exc.__class__.__name__})") from None
    records = []
    for s in range(spec["seeds"]):
        for a in spec["algos"]:
            for w in spec["workers"]:
                rec = RunRecord(run_name(a, w, s), a, w, s)
                rd = d / rec.name
                if not rd.is_dir():
                    rec.status = "missing"
                elif not (rd / "summary.json").is_file():
                    rec.status = "unfinished"
                else:
                    try:
                        rec.summary = json.loads((rd / "summary.json").read_text())
                        rec.metrics = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines() if x]
                    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                        rec.status = f"corrupt: {exc.__class__.__name__}"
                    else:
                        if rec.summary.get("stop_reason") == "interrupted":
                            rec.status = "unfinished"
                records.append(rec)
    return spec, records


def median_ci(values: list[float], role: str) -> tuple[float, float, float]:
    """Median and a 95% percentile-bootstrap interval (inf where unsolved runs dominate)."""
    x = np.asarray(values, float)
    med = float(np.median(x))
    if x.size < 2:
        return med, med, med
    gen = seeding.rng(0, "report_bootstrap", zlib.crc32(role.encode()))
    boots = np.median(gen.choice(x, size=(BOOTSTRAP, x.size), replace=True), axis=1)
    with np.errstate(invalid="ignore"):  # inf - inf inside percentile's interpolation: the bound is inf
        lo, hi = np.percentile(boots, 2.5, method="lower"), np.percentile(boots, 97.5, method="higher")
    return med, float(lo), float(hi)


def speedup_ci(base: list[float], other: list[float], n: int, role: str) -> tuple[float, float, float]:
    """S(n) = median T(base) / median T(n), with a 95% bootstrap interval resampling both groups."""
    b, o = np.asarray(base, float), np.asarray(other, float)
    s = float(np.median(b) / np.median(o)) if np.isfinite(np.median(o)) else 0.0
    if b.size < 2 or o.size < 2:
        return s, s, s
    gen = seeding.rng(0, "report_speedup", n, zlib.crc32(role.encode()))
    mb = np.median(gen.choice(b, size=(BOOTSTRAP, b.size)), axis=1)
    mo = np.median(gen.choice(o, size=(BOOTSTRAP, o.size)), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(np.isfinite(mo), mb / mo, 0.0)
    ratio = np.nan_to_num(ratio, nan=0.0, posinf=np.inf)
    with np.errstate(invalid="ignore"):
        return s, float(np.percentile(ratio, 2.5, method="lower")), float(np.percentile(ratio, 97.5, method="higher"))


def _bytes(rec: RunRecord) -> tuple[dict[str, float], dict[str, float]]:
    """Mean bytes per metrics line (iteration) and per second, by kind (sent + received)."""
    per_it: dict[str, float] = {}
    for m in rec.metrics:
        for direction in ("bytes_sent", "bytes_received"):
            for k, v in m.get(direction, {}).items():
                per_it[k] = per_it.get(k, 0.0) + v
    n = max(1, len(rec.metrics))
    wall = max(1e-9, float(rec.summary.get("wall_s") or 0.0))
    return {k: v / n for k, v in per_it.items()}, {k: v / wall for k, v in per_it.items()}


def table(spec: dict[str, Any], records: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per (algorithm, workers): the statistics every plot and table draws from."""
    rows = []
    for a in spec["algos"]:
        base = [r.ttt for r in records if r.algo == a and r.workers == min(spec["workers"]) and r.status == "ok"]
        for w in spec["workers"]:
            group = [r for r in records if r.algo == a and r.workers == w]
            ok = [r for r in group if r.status == "ok"]
            ts = [r.ttt for r in ok]
            row: dict[str, Any] = {"algo": a, "workers": w, "runs": len(group), "finished": len(ok),
                                   "solved": sum(r.solved for r in ok),
                                   "problems": [f"{r.name}: {r.status}" for r in group if r.status != "ok"]}
            if ts:
                row["ttt_median"], row["ttt_lo"], row["ttt_hi"] = median_ci(ts, f"{a}-{w}")
                row["speedup"], row["speedup_lo"], row["speedup_hi"] = speedup_ci(base, ts, w, a) if base else (
                    math.nan, math.nan, math.nan)
                row["efficiency"] = row["speedup"] * min(spec["workers"]) / w
                row["steps_per_s"] = float(np.median([r.summary["env_steps"] / max(1e-9, r.summary["wall_s"])
                                                      for r in ok]))
                solved = [r for r in ok if r.solved]
                row["episodes_to_train"] = float(np.median([r.summary["episodes"] for r in solved])) if solved \
                    else None
                row["time_per_episode_s"] = float(np.median([r.summary["wall_s"] / max(1, r.summary["episodes"])
                                                             for r in ok]))
                per_it, per_s = zip(*(_bytes(r) for r in ok), strict=True)
                kinds = sorted({k for d in per_it for k in d})
                row["bytes_per_iteration"] = {k: float(np.median([d.get(k, 0.0) for d in per_it])) for k in kinds}
                row["bytes_per_s"] = {k: float(np.median([d.get(k, 0.0) for d in per_s])) for k in kinds}
            rows.append(row)
    return rows


# --- plots ------------------------------------------------------------------------------------

def _fig(title: str, xlabel: str, ylabel: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plots(spec: dict[str, Any], rows: list[dict[str, Any]], records: list[RunRecord], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    workers = spec["workers"]
    paths = []
    by_algo = {a: [r for r in rows if r["algo"] == a and "ttt_median" in r] for a in spec["algos"]}

    fig, ax = _fig("Time to threshold vs workers (median, 95% CI)", "workers", "time to threshold (s)")
    for a, rs in by_algo.items():
        fin = [r for r in rs if math.isfinite(r["ttt_median"])]
        if fin:
            y = np.array([r["ttt_median"] for r in fin])
            lo = y - np.array([r["ttt_lo"] for r in fin])
            hi = np.array([min(r["ttt_hi"], 10 * r["ttt_median"]) for r in fin]) - y
            ax.errorbar([r["workers"] for r in fin], y, yerr=[lo, np.maximum(hi, 0)], marker="o", capsize=4, label=a)
        for r in rs:
            ax.annotate(f"{r['solved']}/{r['finished']} solved", (r["workers"], r["ttt_median"] if math.isfinite(
                r["ttt_median"]) else 0), textcoords="offset points", xytext=(4, 6), fontsize=7)
    ax.set_xticks(workers)
    ax.legend()
    paths.append(_save(fig, out / "time_to_threshold.png"))

    for key, title, ylabel, ideal in (("speedup", "Speedup S(n) = T(1)/T(n)", "speedup", True),
                                      ("efficiency", "Efficiency S(n)/n", "efficiency", False)):
        fig, ax = _fig(title + " vs workers", "workers", ylabel)
        base = min(workers)
        ax.plot(workers, [w / base if ideal else 1.0 for w in workers], "k--", lw=1, label="ideal")
        for a, rs in by_algo.items():
            ax.plot([r["workers"] for r in rs], [r[key] for r in rs], marker="o", label=a)
        ax.set_xticks(workers)
        ax.legend()
        paths.append(_save(fig, out / f"{key}.png"))

    fig, ax = _fig("Throughput vs workers", "workers", "env steps per second")
    for a, rs in by_algo.items():
        ax.plot([r["workers"] for r in rs], [r["steps_per_s"] for r in rs], marker="o", label=a)
    ax.set_xticks(workers)
    ax.legend()
    paths.append(_save(fig, out / "steps_per_s.png"))

    for key, title, ylabel in (("bytes_per_iteration", "Network load per iteration", "bytes per iteration"),
                               ("bytes_per_s", "Network load per second", "bytes per second")):
        fig, ax = _fig(title + " vs workers, by kind", "workers", ylabel + " (log)")
        for a, rs in by_algo.items():
            kinds = sorted({k for r in rs for k, v in r[key].items() if v > 0})  # kinds that moved nothing: omitted
            for k in kinds:
                ys = [max(r[key].get(k, 0.0), 1e-1) for r in rs]
                ax.plot([r["workers"] for r in rs], ys, marker="o", label=f"{a}: {k}")
        ax.set_yscale("log")
        ax.set_xticks(workers)
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / f"{key}.png"))

    fig, ax = _fig("Episodes to train and time per episode", "workers", "episodes to threshold (median)")
    ax2 = ax.twinx()
    ax2.set_ylabel("time per episode (ms)")
    for a, rs in by_algo.items():
        ax.plot([r["workers"] for r in rs], [r["episodes_to_train"] or np.nan for r in rs], marker="o", label=f"{a}: "
                "episodes")
        ax2.plot([r["workers"] for r in rs], [1e3 * r["time_per_episode_s"] for r in rs], marker="s", ls=":",
                 label=f"{a}: ms/episode")
    ax.set_xticks(workers)
    ax.legend(loc="center left", fontsize=7)
    ax2.legend(loc="center right", fontsize=7)
    paths.append(_save(fig, out / "episodes.png"))

    for xkey, xlabel, fname in (("wall_s", "wall time (s)", "curves_time.png"),
                                ("env_steps", "env steps", "curves_steps.png")):
        fig, ax = _fig("Learning curves: evaluation return", xlabel, "evaluation return")
        colors = {a: f"C{i}" for i, a in enumerate(spec["algos"])}
        styles = {w: s for w, s in zip(workers, ["-", "--", ":", "-."] * 8, strict=False)}
        for rec in records:
            pts = [(m[xkey], m["eval_return"]) for m in rec.metrics if m.get("eval_return") is not None]
            if pts:
                curve = np.asarray(pts, float)
                ax.plot(curve[:, 0], curve[:, 1], color=colors[rec.algo], ls=styles[rec.workers], lw=1, alpha=0.7,
                        label=f"{rec.algo}, {rec.workers} workers" if rec.seed == 0 else None)
        if spec.get("target_return") is not None:
            ax.axhline(spec["target_return"], color="k", lw=0.8, ls="--", label="target")
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / fname))
    return paths


# --- documents --------------------------------------------------------------------------------

def _fmt(x: Any, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "not solved"
    return f"{x:.3g}{unit}"


def markdown(spec: dict[str, Any], rows: list[dict[str, Any]], images: list[Path], extra: str = "") -> str:
    lines = [f"# esrl scaling report: {', '.join(spec['algos'])} on {spec['env']}", "",
             f"Grid: workers {spec['workers']}, {spec['seeds']} seeds, backend `{spec['backend']}`, "
             f"budget {spec['max_seconds']} s per run. Time to threshold includes worker start-up and evaluation; "
             "unsolved runs count as infinitely slow.", "",
             "| algorithm | workers | solved | time to threshold, median [95% CI] | speedup [95% CI] | efficiency "
             "| env steps/s | episodes to train | bytes/iteration | bytes/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "ttt_median" not in r:
            lines.append(f"| {r['algo']} | {r['workers']} | 0/{r['runs']} | no finished run | - | - | - | - | - | - |")
            continue
        bpi = sum(r["bytes_per_iteration"].values())
        bps = sum(r["bytes_per_s"].values())
        lines.append(
            f"| {r['algo']} | {r['workers']} | {r['solved']}/{r['runs']} | {_fmt(r['ttt_median'], ' s')} "
            f"[{_fmt(r['ttt_lo'])}, {_fmt(r['ttt_hi'])}] | {_fmt(r['speedup'])} [{_fmt(r['speedup_lo'])}, "
            f"{_fmt(r['speedup_hi'])}] | {_fmt(r['efficiency'])} | {_fmt(r['steps_per_s'])} | "
            f"{_fmt(r['episodes_to_train'])} | {_fmt(bpi)} | {_fmt(bps)} |")
    problems = [p for r in rows for p in r["problems"]]
    if problems:
        lines += ["", "Runs not counted (missing, unfinished or corrupt):", ""] + [f"- {p}" for p in problems]
    lines += ["", extra] if extra else []
    lines += [""] + [f"![{p.stem}]({p.parent.name}/{p.name})" for p in images]
    return "\n".join(lines) + "\n"


def html(md_text: str, images: list[Path]) -> str:
    """A self-contained page: the table as HTML, the plots inlined as base64 PNG."""
    body, in_table = [], False
    for line in md_text.splitlines():
        if line.startswith("|---"):
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("## "):
            body.append(f"<h2>{line[3:]}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{line[2:]}</h1>")
        elif line.startswith("- "):
            body.append(f"<li>{line[2:]}</li>")
        elif line.startswith("!["):
            continue
        elif line.strip():
            body.append(f"<p>{line}</p>")
    for p in images:
        data = base64.b64encode(p.read_bytes()).decode()
        body.append(f'<figure><img alt="{p.stem}" src="data:image/png;base64,{data}"><figcaption>{p.stem}'
                    "</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}figure{display:inline-block;margin:8px}"
             "img{max-width:520px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>esrl report</title><style>{style}</style>" \
           f"</head><body>{''.join(body)}</body></html>\n"


def report(sweep_dir: str | Path, bandwidth: float = 125e6, latency: float = 1e-4) -> dict[str, Any]:
    """Write report.md, report.html and plots/ into the sweep directory; returns their paths and the table."""
    from esrl.experiments import model

    d = Path(sweep_dir)
    spec, records = load(d)
    rows = table(spec, records)
    images = plots(spec, rows, records, d / "plots")
    fits = model.fit(spec, records)
    if fits:
        images.append(model.plot(fits, rows, spec, d / "plots" / "scaling_model.png", bandwidth, latency))
    extra = model.describe(fits, bandwidth, latency) if fits else ""
    md = markdown(spec, rows, images, extra)
    atomic_write(d / "report.md", md.encode())
    atomic_write(d / "report.html", html(md, images).encode())
    atomic_write(d / "report.json", json.dumps({"rows": rows, "model": fits}, indent=2, default=str).encode())
    return {"report_md": str(d / "report.md"), "report_html": str(d / "report.html"), "rows": rows}
