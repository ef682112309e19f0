"""`esrl report SWEEP_DIR --beside OTHER`: another sweep of the same env and target set beside this one.

Typically one sweep was measured (processes, ray) and the other simulated: per arm and worker
count both sweeps' median time to threshold and speedup, the ratio of the medians, where ES
overtakes each RL arm in each, and one plot of both speedups with the model fitted to this
sweep. Sweeps of another env or target are refused; every other difference is said.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from esrl.errors import InputError
from esrl.experiments import model, plots
from esrl.experiments import verdict as verdicts
from esrl.experiments.records import RunRecord, load, target_of
from esrl.experiments.report import _fmt, table
from esrl.experiments.sweep import SweepSpec

# the backend is what a sweep beside this one is for, an address names a cluster; the target is compared resolved
_NOT_COMPARED = ("backend", "address", "target_return")
_FIRST = ("env", "target_return", "algos", "settings")  # the differences said first
_FIELD_NAMES = {"algos": "arms", "target_return": "target"}


@dataclasses.dataclass
class Other:
    """The sweep set beside this one, as loaded."""

    dir: Path
    spec: dict[str, Any]
    records: list[RunRecord]
    target: float | None
    differences: dict[str, list[Any]]
    rows: list[dict[str, Any]]  # its report table (report.table)


def label(spec: dict[str, Any]) -> str:
    """The backend, and that its times are virtual where they are."""
    b = str(spec.get("backend"))
    return f"{b} (virtual s)" if b == "simulated" else b


def _spec_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """sweep.json with fields written before they existed at their defaults (as a restarted sweep reads it)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(SweepSpec):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return {**out, **spec}


def differences(spec: dict[str, Any], other: dict[str, Any], target: float | None, other_target: float | None
                ) -> dict[str, list[Any]]:
    """sweep.json fields in which two sweeps differ, as [this, other]; `sim` only where both ran simulated."""
    a, b = _spec_fields(spec), _spec_fields(other)
    both_sim = a.get("backend") == b.get("backend") == "simulated"
    keys = [k for k in _FIRST if k in a or k in b] + sorted((set(a) | set(b)) - set(_FIRST))
    out = {k: [a.get(k), b.get(k)] for k in keys
           if k not in _NOT_COMPARED and (k != "sim" or both_sim) and a.get(k) != b.get(k)}
    if target != other_target:
        out = {"target_return": [target, other_target], **out}
    return out


def load_other(other_dir: str | Path, spec: dict[str, Any], target: float | None) -> Other:
    """The other sweep, refused where its points cannot stand beside this one's (another env or target)."""
    d = Path(other_dir)
    try:
        o_spec, o_records = load(d)
    except InputError as exc:
        raise InputError("beside", exc.problem) from None
    o_target = target_of(o_spec, o_records)
    diff = differences(spec, o_spec, target, o_target)
    if "env" in diff or "target_return" in diff:
        raise InputError("beside", f"{d} is a sweep of {o_spec.get('env')} to target {_fmt(o_target)}, this one of "
                         f"{spec.get('env')} to {_fmt(target)}: their points are not comparable")
    return Other(d, o_spec, o_records, o_target, diff, table(o_spec, o_records))


def overtakes(spec: dict[str, Any], rows: list[dict[str, Any]], model_crossovers: dict[str, dict[str, Any]]
              ) -> list[dict[str, Any]]:
    """Per RL arm: the smallest worker count at which ES's median time to threshold is lower (None: no crossover
    within the grid), from the verdict's measured comparison; the model's crossover beside it."""
    if "es" not in spec["algos"]:
        return []
    out = []
    for arm in (a for a in spec["algos"] if a != "es"):
        faster_at = verdicts.measured_crossover("es", arm, rows)["faster_at"]
        at = min((w for w, a in faster_at.items() if a == "es"), default=None)
        if at is None:
            text = (f"no crossover within the grid: es's median time to threshold is lower than {arm}'s at none of "
                    f"{', '.join(map(str, spec['workers']))} workers")
        elif at == min(faster_at):
            text = (f"es is faster already at {_n(at)}, the fewest compared: it leads from the start, no crossover "
                    "within the grid")
        else:
            text = f"es overtakes {arm} at {_n(at)} ({arm} faster below)"
        again = sorted(w for w, a in faster_at.items() if a == arm and at is not None and w > at)
        if again:
            text += f"; {arm} is faster again at {', '.join(map(str, again))} workers"
        mw = model_crossovers.get(arm, {}).get("workers")
        if arm in model_crossovers:
            text += (f"; the model fitted to the sweep puts a crossover at {mw} workers" if mw is not None
                     else f"; the model fitted to the sweep has none up to {model.N_MAX} workers")
        out.append({"arms": ["es", arm], "workers": at, "overtakes": at is not None and at != min(faster_at),
                    "model_workers": mw, "text": text})
    return out


def _n(w: int) -> str:
    return f"{w} worker" if w == 1 else f"{w} workers"


def _over(other: float | None, this: float | None) -> float | None:
    """other / this of median times: inf where only this one solved, 0 where only the other did."""
    if other is None or this is None or this == 0 or (math.isinf(other) and math.isinf(this)):
        return None
    return 0.0 if math.isinf(this) else other / this


def entry(spec: dict[str, Any], rows: list[dict[str, Any]], model_crossovers: dict[str, dict[str, Any]],
          other: Other, bandwidth: float, latency: float) -> dict[str, Any]:
    """Both sweeps' median time to threshold and speedup per arm and worker count, their ratio, and where ES
    overtakes each RL arm in each (an item of report.json's `beside`)."""
    o_rows = other.rows
    o_fits = model.fit(other.spec, other.records, other.target)
    o_ref = "es" if "es" in other.spec["algos"] else other.spec["algos"][0]
    by = {(r["arm"], r["workers"]): r for r in rows}
    o_by = {(r["arm"], r["workers"]): r for r in o_rows}
    comparison: dict[str, list[dict[str, Any]]] = {}
    for a in dict.fromkeys([*spec["algos"], *other.spec["algos"]]):
        comparison[a] = []
        for w in sorted({w for arm, w in [*by, *o_by] if arm == a}):
            t, o = by.get((a, w), {}), o_by.get((a, w), {})
            comparison[a].append({"workers": w, "this_median_s": t.get("ttt_median"), "this_speedup": t.get("speedup"),
                                  "other_median_s": o.get("ttt_median"), "other_speedup": o.get("speedup"),
                                  "other_over_this": _over(o.get("ttt_median"), t.get("ttt_median"))})
    return {"dir": str(other.dir), "backend": other.spec.get("backend"), "this_backend": spec.get("backend"),
            "clock": "virtual" if other.spec.get("backend") == "simulated" else "wall",
            "differences": other.differences, "comparison": comparison,
            "crossovers": {"this": overtakes(spec, rows, model_crossovers),
                           "other": overtakes(other.spec, o_rows,
                                              model.crossovers(o_fits, o_ref, bandwidth, latency))}}


def _value(v: Any) -> str:
    if isinstance(v, list):
        return ", ".join(map(str, v)) or "none"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True) if v else "none"
    return _fmt(v) if isinstance(v, float) else str(v)


def markdown(spec: dict[str, Any], e: dict[str, Any]) -> str:
    """The report's section "Beside <dir> (<backend>)": the differences, a table per arm, the crossovers."""
    this, other = f"this ({e['this_backend']})", f"beside ({e['backend']})"
    this_unit = "virtual s" if spec.get("backend") == "simulated" else "s"
    other_unit = "virtual s" if e["clock"] == "virtual" else "s"
    if e["differences"]:
        said = "; ".join(f"{_FIELD_NAMES.get(k, k)}: {_value(a)} in this sweep, {_value(b)} beside"
                         for k, (a, b) in e["differences"].items())
        agree = f"The two sweeps differ (sweep.json): {said}."
    else:
        agree = "The two sweeps agree in env, target, arms, settings and every other sweep.json field but the backend."
    lines = [f"## Beside {e['dir']} ({e['backend']})", "",
             f"This sweep ran on `{e['this_backend']}`, the one beside it on `{e['backend']}`"
             + ("; times beside are virtual seconds of the simulated cluster" if other_unit == "virtual s" else "")
             + ("; times here are virtual seconds of the simulated cluster" if this_unit == "virtual s" else "")
             + ". Speedup is each sweep's median time to threshold at its own fewest workers over that at n; the "
             "last column is the median time beside over the one here (above 1: slower beside; inf: solved here "
             "only; 0: solved beside only). " + agree]
    for arm, pts in e["comparison"].items():
        lines += ["", f"### {arm}", "",
                  f"| workers | {this}: time to threshold, median ({this_unit}) | {this}: speedup | {other}: time to "
                  f"threshold, median ({other_unit}) | {other}: speedup | beside / this |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {p['workers']} | {_fmt(p['this_median_s'])} | {_fmt(p['this_speedup'])} | "
                  f"{_fmt(p['other_median_s'])} | {_fmt(p['other_speedup'])} | "
                  f"{'inf' if p['other_over_this'] == math.inf else _fmt(p['other_over_this'])} |" for p in pts]
    lines += ["", "Where es overtakes each RL arm (the smallest worker count at which es's median time to threshold "
              "is lower):", ""]
    for who, xs in ((this, e["crossovers"]["this"]), (other, e["crossovers"]["other"])):
        lines += [f"- {who}: es against {x['arms'][1]}: {x['text']}." for x in xs] or [f"- {who}: no es arm."]
    return "\n".join(lines)


def plot(spec: dict[str, Any], rows: list[dict[str, Any]], fits: dict[str, dict[str, Any]], others: list[Other],
         path: Path, bandwidth: float, latency: float) -> Path:
    """plots/beside.png: every sweep's speedup by arm, and the model fitted to this sweep from its fewest workers."""
    series = [(label(spec), rows)] + [(f"{label(o.spec)}, {o.dir.name}", o.rows) for o in others]
    ws = [r["workers"] for _, rs in series for r in rs]
    n = np.geomspace(min(ws), max(ws), 64)
    base = np.array([float(min(spec["workers"]))])  # the model's speedup from this sweep's fewest, as its points
    curves = {a: (n, model.predict_time(f, base, bandwidth, latency) / model.predict_time(f, n, bandwidth, latency))
              for a, f in fits.items()}
    return plots.beside(series, curves, f"model fitted to {label(spec)}", path)
