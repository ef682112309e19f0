"""`esrl report SWEEP_DIR`: the verdict first, then the evidence, as report.md, report.html, report.json and plots.

Every run of the sweep's grid is accounted for: finished runs feed the statistics, runs
whose solve was not confirmed count as unsolved (infinitely slow; shown, never dropped),
and runs that are missing or whose files are corrupt are listed as such.
"""

from __future__ import annotations

import base64
import html as htmllib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from esrl.experiments import machine as machine_info
from esrl.experiments import verdict as verdicts
from esrl.experiments.records import RunRecord, load, target_of
from esrl.experiments.verdict import interval_kind, median_interval, speedup_interval
from esrl.runs.rundir import atomic_write

__all__ = ["RunRecord", "load", "median_interval", "report", "speedup_interval", "table"]


def _bytes(rec: RunRecord) -> tuple[dict[str, float], dict[str, float]]:
    """Mean bytes per metrics line (iteration) and per second, by kind (sent + received)."""
    per_it: dict[str, float] = {}
    for m in rec.metrics:
        for direction in ("bytes_sent", "bytes_received"):
            for k, v in (m.get(direction) or {}).items():
                per_it[k] = per_it.get(k, 0.0) + v
    n = max(1, len(rec.metrics))
    wall = max(1e-9, float(rec.summary.get("wall_s") or 0.0))
    return {k: v / n for k, v in per_it.items()}, {k: v / wall for k, v in per_it.items()}


def _median(xs: list[float]) -> float | None:
    return float(np.median(xs)) if xs else None


def group_sizes(spec: dict[str, Any], records: list[RunRecord]) -> int:
    """Finished runs in the smallest (arm, workers) group that has any."""
    sizes = [sum(r.status == "ok" for r in records if r.arm == a and r.workers == w)
             for a in spec["algos"] for w in spec["workers"]]
    return min((s for s in sizes if s), default=0)


def table(spec: dict[str, Any], records: list[RunRecord], kind: str | None = None) -> list[dict[str, Any]]:
    """One row per (arm, workers): the statistics every plot and table draws from."""
    kind = kind or interval_kind(group_sizes(spec, records))
    target = target_of(spec, records)
    rows = []
    base_w = min(spec["workers"])
    for a in spec["algos"]:
        base = [r.ttt for r in records if r.arm == a and r.workers == base_w and r.status == "ok"]
        for w in spec["workers"]:
            group = [r for r in records if r.arm == a and r.workers == w]
            ok = [r for r in group if r.status == "ok"]
            row: dict[str, Any] = {"arm": a, "algo": group[0].algo if group else a.split(":")[0], "workers": w,
                                   "runs": len(group), "finished": len(ok), "interval": kind,
                                   "solved_eval": sum(r.solved_eval for r in ok),
                                   "confirmed": sum(r.confirmed for r in ok),
                                   "unconfirmed_record": sum(r.solved_eval and "confirmed" not in r.summary
                                                             for r in ok),
                                   "problems": [f"{r.name}: {r.status}" for r in group if r.status != "ok"]}
            row["solved"] = row["confirmed"]
            if ok:
                ts = [r.ttt for r in ok]
                row["ttt_median"], row["ttt_lo"], row["ttt_hi"] = median_interval(ts, f"{a}-{w}", kind)
                if base:
                    s = speedup_interval(base, ts, f"{a}-{w}", kind)
                else:
                    s = (math.nan, math.nan, math.nan)
                row["speedup"], row["speedup_lo"], row["speedup_hi"] = s
                row["efficiency"], row["efficiency_lo"], row["efficiency_hi"] = (x * base_w / w for x in s)
                row["steps_per_s"] = float(np.median([r.env_steps / max(1e-9, float(r.summary.get("wall_s") or 0))
                                                      for r in ok]))
                solved = [r for r in ok if r.confirmed]
                row["episodes_to_threshold"] = _median([float(r.episodes_to_threshold()) for r in solved])
                row["episodes_to_train"] = row["episodes_to_threshold"]
                row["env_steps_to_threshold"] = _median([float(r.steps_to_threshold(target)) for r in solved])
                row["time_per_episode_s"] = float(np.median([float(r.summary.get("wall_s") or 0)
                                                             / max(1, int(r.summary.get("episodes") or 0))
                                                             for r in ok]))
                row["bytes_per_env_step"] = float(np.median([r.bytes_per_env_step() for r in ok]))
                to_thr = [b for r in solved if (b := r.bytes_to_threshold(target)) is not None]
                row["bytes_to_threshold"] = _median(to_thr)
                row["bytes_startup"] = _median([float(r.summary["bytes_startup"]) for r in ok
                                                if r.summary.get("bytes_startup") is not None])
                row["transport"] = ", ".join(sorted({r.transport for r in ok}))
                row["sync"] = ok[0].sync
                row["num_params"] = ok[0].num_params
                row["eval_s"] = _median([float(r.summary["eval_s"]) for r in ok if r.summary.get("eval_s") is not None])
                per_it, per_s = zip(*(_bytes(r) for r in ok), strict=True)
                kinds = sorted({k for d in per_it for k in d})
                row["bytes_per_iteration"] = {k: float(np.median([d.get(k, 0.0) for d in per_it])) for k in kinds}
                row["bytes_per_s"] = {k: float(np.median([d.get(k, 0.0) for d in per_s])) for k in kinds}
            rows.append(row)
    return rows


def arms(spec: dict[str, Any], records: list[RunRecord]) -> list[dict[str, Any]]:
    """What each arm is: algorithm, sync mode, parameter count, backend, transport, settings."""
    out = []
    for a in spec["algos"]:
        ok = [r for r in records if r.arm == a and r.status == "ok"]
        settings = {**spec.get("settings", {}).get(a.split(":")[0], {}), **spec.get("settings", {}).get(a, {})}
        out.append({"arm": a, "algo": a.split(":")[0], "sync": ok[0].sync if ok else None,
                    "num_params": ok[0].num_params if ok else None,
                    "backend": spec.get("backend"), "transport": ", ".join(sorted({r.transport for r in ok})) or None,
                    "settings": settings})
    return out


def machine_of(d: Path) -> dict[str, Any]:
    """The machine the sweep recorded (its last start), else this one, labelled as such."""
    try:
        sessions = json.loads((d / "machine.json").read_text())["sessions"]
        m = dict(sessions[-1])
        keys = [k for k in m if k != "started"]
        if any({k: s.get(k) for k in keys} != {k: m[k] for k in keys} for s in sessions):
            m["note"] = f"the sweep was started {len(sessions)} times on differing machines or versions: the last shown"
        m["source"] = "recorded by the sweep"
        return m
    except (OSError, json.JSONDecodeError, KeyError, IndexError, TypeError):
        return {**machine_info.gather(), "source": "the machine that wrote this report (the sweep recorded none)"}


# --- documents --------------------------------------------------------------------------------

def _fmt(x: Any, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "not solved" if x > 0 else "-"
    if isinstance(x, int):
        return f"{x}{unit}"
    return f"{x:.3g}{unit}"


def _iv(r: dict[str, Any], key: str) -> str:
    base = key.removesuffix("_median")
    return f"{_fmt(r[key])} [{_fmt(r[base + '_lo'])}, {_fmt(r[base + '_hi'])}]"


def markdown(spec: dict[str, Any], rows: list[dict[str, Any]], arm_rows: list[dict[str, Any]], verdict: dict[str, Any],
             machine: dict[str, Any], images: list[Path], model_text: str, target: float | None,
             beside_text: str = "") -> str:
    kind = verdict["interval"]
    lines = [f"# esrl scaling report: {', '.join(spec['algos'])} on {spec['env']}", "", "## Verdict", "",
             f"Which arm reaches the confirmed target return ({_fmt(target)}) sooner, by worker count "
             f"(ratio = median time-to-threshold of the slower over the faster):", "", verdict["text"], "",
             "## The runs", "",
             f"Grid: workers {spec['workers']}, {spec['seeds']} seeds, backend `{spec['backend']}`, budget "
             f"{spec['max_seconds']} s per run, target return {_fmt(target)}. Time to threshold is training time: "
             "worker start-up included, evaluations (training paused) excluded; a run counts as solved only when its solve was confirmed on fresh episodes; "
             f"unsolved runs count as infinitely slow. Intervals: {verdicts.interval_note(kind)}."
             + _clock_note(spec), "",
             f"| arm | workers | solved (evaluation) | confirmed | time to threshold, median [{kind}] | "
             f"speedup [{kind}] | efficiency [{kind}] | env steps/s | episodes to threshold | bytes/env step | "
             "bytes to threshold | transport |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "ttt_median" not in r:
            lines.append(f"| {r['arm']} | {r['workers']} | 0/{r['runs']} | 0/{r['runs']} | no finished run | - | - | "
                         "- | - | - | - | - |")
            continue
        lines.append(
            f"| {r['arm']} | {r['workers']} | {r['solved_eval']}/{r['runs']} | {r['confirmed']}/{r['runs']} | "
            f"{_iv(r, 'ttt_median')} | {_iv(r, 'speedup')} | {_iv(r, 'efficiency')} | {_fmt(r['steps_per_s'])} | "
            f"{_fmt(r['episodes_to_threshold'])} | {_fmt(r['bytes_per_env_step'])} | {_fmt(r['bytes_to_threshold'])} "
            f"| {r['transport']} |")
    problems = [p for r in rows for p in r["problems"]]
    if problems:
        lines += ["", "Runs not counted (missing, unfinished or corrupt):", ""] + [f"- {p}" for p in problems]
    lines += ["", "## Arms", "", "| arm | algorithm | sync | parameters | backend | transport | settings |",
              "|---|---|---|---|---|---|---|"]
    for a in arm_rows:
        sync = a["sync"] or ("scalars" if a["algo"] == "es" else "-")
        settings = ", ".join(f"{k}={v}" for k, v in a["settings"].items()) or "defaults"
        lines.append(f"| {a['arm']} | {a['algo']} | {sync} | {_fmt(a['num_params'])} | {a['backend']} | "
                     f"{a['transport'] or '-'} | {settings} |")
    lines += ["", "## Traffic", "",
              "Bytes per env step and bytes to the confirmed target put every arm on one axis. The transport says "
              "what the bytes are: `pipe` and `ray` bytes are serialized messages between processes (network "
              "bytes once workers sit on other machines); `shared-memory` bytes are copies into and out of one "
              "machine's shared memory (lock, hogwild), not network bytes; `in-process` moves nothing. "
              "`(inferred)` marks runs written before summaries named their transport. Start-up bytes (the first "
              "full state) are kept apart where the runs record them."]
    startup = [f"{r['arm']} at {r['workers']} workers: {_fmt(r['bytes_startup'])} B" for r in rows
               if r.get("bytes_startup") is not None]
    if startup:
        lines += ["", "Start-up bytes (median): " + "; ".join(startup) + "."]
    if model_text:
        lines += ["", model_text]
    if beside_text:
        lines += ["", beside_text]
    lines += ["", "## Machine", "", f"Source: {machine.get('source', 'unknown')}."
              + (f" Note: {machine['note']}." if machine.get("note") else ""), "", "| | |", "|---|---|"]
    lines += machine_info.describe(machine)
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.parent.name}/{p.name})" for p in images]
    return "\n".join(lines) + "\n"


def html(md_text: str, images: list[Path]) -> str:
    """A self-contained page: the tables as HTML, the plots inlined as base64 PNG."""
    body, in_table, in_list = [], False, False
    for raw in md_text.splitlines():
        line = htmllib.escape(raw, quote=False)
        if raw.startswith("|---"):
            continue
        is_row, is_item = raw.startswith("|"), raw.startswith("- ")
        if in_table and not is_row:
            body.append("</table>")
            in_table = False
        if in_list and not is_item:
            body.append("</ul>")
            in_list = False
        if is_row:
            cells = [c.strip() for c in line.strip("|").split("|")]
            tag = "td" if in_table else "th"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
        elif is_item:
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{line[2:]}</li>")
        elif raw.startswith("### "):
            body.append(f"<h3>{line[4:]}</h3>")
        elif raw.startswith("## "):
            body.append(f"<h2>{line[3:]}</h2>")
        elif raw.startswith("# "):
            body.append(f"<h1>{line[2:]}</h1>")
        elif raw.startswith("![") or not raw.strip():
            continue
        else:
            body.append(f"<p>{line}</p>")
    body.append("</table>" if in_table else "")
    body.append("</ul>" if in_list else "")
    for p in images:
        data = base64.b64encode(p.read_bytes()).decode()
        body.append(f'<figure><img alt="{p.stem}" src="data:image/png;base64,{data}"><figcaption>{p.stem}'
                    "</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px}figure{display:inline-block;"
             "margin:8px}img{max-width:520px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>esrl report</title><style>{style}</style>" \
           f"</head><body>{''.join(body)}</body></html>\n"


def _jsonable(x: Any) -> Any:
    """Non-finite floats as strings ("inf", "nan"): report.json stays strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return x


def report(sweep_dir: str | Path, bandwidth: float = 125e6, latency: float = 1e-4,
           beside: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Write report.md, report.html, report.json and plots/ into the sweep directory; `beside`: other sweeps of
    the same env and target to set beside this one (another backend, typically simulated against measured)."""
    from esrl.experiments import beside as besides
    from esrl.experiments import model, plots

    d = Path(sweep_dir)
    spec, records = load(d)
    target = target_of(spec, records)
    others = [besides.load_other(o, spec, target) for o in beside]  # refused before anything is written
    kind = interval_kind(group_sizes(spec, records))
    rows = table(spec, records, kind)
    fits = model.fit(spec, records, target)
    ref = "es" if "es" in spec["algos"] else spec["algos"][0]
    model_crossovers = model.crossovers(fits, ref, bandwidth, latency)
    verdict = verdicts.build(list(spec["algos"]), list(spec["workers"]), records, rows, kind, target,
                             model_crossovers)
    images = plots.make(spec, rows, records, d / "plots", target, kind)
    if fits:
        images.append(model.plot(fits, rows, d / "plots" / "scaling_model.png", bandwidth, latency))
    entries = [besides.entry(spec, rows, model_crossovers, o, bandwidth, latency) for o in others]
    if entries:
        images.append(besides.plot(spec, rows, fits, others, d / "plots" / "beside.png", bandwidth, latency))
    machine = machine_of(d)
    arm_rows = arms(spec, records)
    md = markdown(spec, rows, arm_rows, verdict, machine, images, model.describe(fits, bandwidth, latency)
                  if fits else "", target, "\n\n".join(besides.markdown(spec, e) for e in entries))
    atomic_write(d / "report.md", md.encode())
    atomic_write(d / "report.html", html(md, images).encode())
    doc = {"verdict": verdict, "machine": machine, "target_return": target, "interval": kind, "arms": arm_rows,
           "rows": rows, "model": fits, "model_hub": {"bandwidth_bytes_per_s": bandwidth, "latency_s": latency}}
    if entries:
        doc["beside"] = entries
    atomic_write(d / "report.json", (json.dumps(_jsonable(doc), indent=2) + "\n").encode())
    return {"report_md": str(d / "report.md"), "report_html": str(d / "report.html"),
            "report_json": str(d / "report.json"), "rows": rows, "verdict": verdict, "beside": entries}


def _clock_note(spec: dict[str, Any]) -> str:
    """On the simulated backend every time is virtual: say so where the times are."""
    if spec.get("backend") != "simulated":
        return ""
    sim = spec.get("sim") or {}
    net = ", ".join(f"{k} {v}" for k, v in sorted(sim.items())) or "the simulated backend's defaults"
    return (" **Every time here is in virtual seconds** of the simulated cluster (`--backend simulated`: the real "
            "algorithms on N logical workers, time from a cost model calibrated on this machine and then fixed; "
            f"{net}), not wall seconds.")
