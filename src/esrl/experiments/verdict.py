"""Intervals honest about the number of seeds, and the verdict: which arm reaches the target sooner.

With 5 or more finished seeds per group an interval is a 95% percentile bootstrap
confidence interval. With fewer it is called a *range*: for one group the min-max across
seeds; for a ratio of two groups' medians the min-max over the bootstrap resamples (both
groups resampled). The bootstrap is seeded, so a report is reproducible.
"""

from __future__ import annotations

import itertools
import math
import zlib
from typing import Any

import numpy as np

from esrl import seeding

BOOTSTRAP = 2000
MIN_SEEDS_CI = 5  # below this an interval is a range, never a "95% CI"
MIN_SEEDS_CALL = 3  # below this the verdict says there are too few seeds to tell


def interval_kind(n_min: int) -> str:
    return "95% CI" if n_min >= MIN_SEEDS_CI else "range"


def interval_note(kind: str) -> str:
    if kind == "95% CI":
        return (f"intervals are 95% percentile-bootstrap confidence intervals ({BOOTSTRAP} seeded resamples over "
                "seeds)")
    return (f"fewer than {MIN_SEEDS_CI} seeds per group: intervals are ranges, not confidence intervals: the "
            f"min-max across seeds for one group's median, the min-max over {BOOTSTRAP} seeded bootstrap resamples "
            "(both groups resampled) for ratios, speedups and efficiencies")


def _gen(role: str, *index: int) -> np.random.Generator:
    return seeding.rng(0, "report_bootstrap", zlib.crc32(role.encode()), *index)


def _bounds(x: np.ndarray, kind: str) -> tuple[float, float]:
    if kind == "95% CI":
        with np.errstate(invalid="ignore"):  # inf - inf inside the interpolation: the bound is inf
            return float(np.percentile(x, 2.5, method="lower")), float(np.percentile(x, 97.5, method="higher"))
    return float(np.min(x)), float(np.max(x))


def median_interval(values: list[float], role: str, kind: str = "95% CI") -> tuple[float, float, float]:
    """Median and its interval (inf where unsolved runs dominate)."""
    x = np.asarray(values, float)
    med = float(np.median(x))
    if x.size < 2:
        return med, med, med
    if kind != "95% CI":
        return med, float(x.min()), float(x.max())
    boots = np.median(_gen(role).choice(x, size=(BOOTSTRAP, x.size), replace=True), axis=1)
    return (med, *_bounds(boots, kind))


def _ratio(num: np.ndarray, den: np.ndarray, both_unsolved: float) -> np.ndarray:
    """num / den of median times: unsolved (inf) over solved is inf, solved over unsolved 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(np.isfinite(den), num / den, np.where(np.isfinite(num), 0.0, both_unsolved))
    return np.asarray(r, float)


def ratio_interval(num: list[float], den: list[float], role: str, kind: str = "95% CI",
                   both_unsolved: float = math.nan) -> tuple[float, float, float]:
    """median(num) / median(den) with an interval from resampling both groups."""
    a, b = np.asarray(num, float), np.asarray(den, float)
    r = float(_ratio(np.array([np.median(a)]), np.array([np.median(b)]), both_unsolved)[0])
    if a.size < 2 and b.size < 2:
        return r, r, r
    gen = _gen(role, a.size, b.size)
    ma = np.median(gen.choice(a, size=(BOOTSTRAP, a.size)), axis=1)
    mb = np.median(gen.choice(b, size=(BOOTSTRAP, b.size)), axis=1)
    boots = _ratio(ma, mb, both_unsolved)
    boots = boots[~np.isnan(boots)]
    if boots.size == 0:
        return r, math.nan, math.nan
    return (r, *_bounds(boots, kind))


def speedup_interval(base: list[float], other: list[float], role: str, kind: str = "95% CI"
                     ) -> tuple[float, float, float]:
    """S(n) = median T(base) / median T(n); 0 where T(n) is unsolved, undefined where both are."""
    return ratio_interval(base, other, "speedup:" + role, kind, both_unsolved=math.nan)


# --- the verdict ------------------------------------------------------------------------------

def _fmt_s(t: float) -> str:
    return "not reached" if math.isinf(t) else f"{t:.3g} s"


def _fmt_x(x: float) -> str:
    return "inf" if math.isinf(x) else ("-" if math.isnan(x) else f"{x:.2g}x")


def _n_workers(n: int) -> str:
    return f"{n} worker" if n == 1 else f"{n} workers"


def _groups(records: list[Any], workers: int) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in records:
        if r.workers == workers and r.status == "ok":
            out.setdefault(r.arm, []).append(r)
    return out


def compare(fast: str, slow: str, runs: dict[str, list[Any]], workers: int, kind: str) -> dict[str, Any]:
    """How much sooner `fast` reaches the confirmed target than `slow`: T(slow) / T(fast) and how sure that is."""
    tf, ts = [r.ttt for r in runs.get(fast, [])], [r.ttt for r in runs.get(slow, [])]
    if not tf or not ts:
        return {"ratio": None, "lo": None, "hi": None, "sure": "no runs", "seeds": min(len(tf), len(ts))}
    ratio, lo, hi = ratio_interval(ts, tf, f"verdict:{fast}/{slow}:{workers}", kind, both_unsolved=1.0)
    seeds = min(len(tf), len(ts))
    if math.isinf(float(np.median(tf))):
        sure = "no solves"
    elif seeds < MIN_SEEDS_CALL:
        sure = "too few seeds"
    elif lo <= 1.0:
        sure = "not distinguishable"
    else:
        sure = "clear"
    return {"ratio": ratio, "lo": lo, "hi": hi, "sure": sure, "seeds": seeds}


def _sure_words(c: dict[str, Any], kind: str) -> str:
    interval = f"{kind} {_fmt_x(c['lo'])}-{_fmt_x(c['hi'])}"
    return {"no solves": "no arm reached the confirmed target in most of its seeds",
            "too few seeds": f"{interval}, but only {c['seeds']} seed(s) per arm: too few to tell",
            "not distinguishable": f"{interval} includes 1: not distinguishable with {c['seeds']} seeds",
            "clear": f"{interval} excludes 1 over {c['seeds']} seeds"}.get(c["sure"], c["sure"])


def per_workers(arms: list[str], records: list[Any], workers: int, kind: str) -> dict[str, Any]:
    """The verdict at one worker count: the fastest arm against the next fastest, and every arm's standing."""
    runs = _groups(records, workers)
    standing = {a: {"median_s": float(np.median([r.ttt for r in runs[a]])) if runs.get(a) else None,
                    "confirmed": sum(r.confirmed for r in runs.get(a, [])), "runs": len(runs.get(a, []))}
                for a in arms}
    ranked = sorted((a for a in arms if standing[a]["median_s"] is not None),
                    key=lambda a: (standing[a]["median_s"], -standing[a]["confirmed"]))
    out: dict[str, Any] = {"workers": workers, "arms": standing, "faster": None, "slower": None, "ratio": None,
                           "lo": None, "hi": None, "sure": "no runs"}
    counts = ", ".join(f"{a} {standing[a]['confirmed']}/{standing[a]['runs']}" for a in arms)
    if not ranked or math.isinf(standing[ranked[0]]["median_s"]):
        out["sure"] = "no solves"
        out["text"] = (f"With {_n_workers(workers)} no arm reached the confirmed target in at least half its seeds "
                       f"(confirmed solves: {counts}).")
        return out
    fast = ranked[0]
    out["faster"] = fast
    if len(ranked) == 1:
        out["text"] = f"With {_n_workers(workers)} only {fast} has finished runs ({counts})."
        return out
    slow = ranked[1]
    c = compare(fast, slow, runs, workers, kind)
    out.update({"slower": slow, **{k: c[k] for k in ("ratio", "lo", "hi", "sure")}})
    tf, ts = standing[fast]["median_s"], standing[slow]["median_s"]
    lead = ("reaches the confirmed target sooner than every other arm" if len(ranked) > 2
            else f"reaches the confirmed target sooner than {slow}")
    nxt = " (the next fastest)" if len(ranked) > 2 else ""
    if math.isinf(ts):
        how = (f"only {c['seeds']} seed(s) per arm: too few to tell" if c["sure"] == "too few seeds"
               else _sure_words(c, kind))
        compared = f"median {_fmt_s(tf)}, while {slow}{nxt} did not reach it in most of its seeds ({how})"
    else:
        compared = (f"median {_fmt_s(tf)} against {_fmt_s(ts)} for {slow}{nxt}, {_fmt_x(c['ratio'])} sooner "
                    f"({_sure_words(c, kind)})")
    out["text"] = f"With {_n_workers(workers)}, {fast} {lead}: {compared}. Confirmed solves: {counts}."
    return out


def measured_crossover(ref: str, other: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the faster of two arms changes over the measured worker counts."""
    by_w: dict[int, dict[str, float]] = {}
    for r in rows:
        if r["arm"] in (ref, other) and r.get("ttt_median") is not None:
            by_w.setdefault(r["workers"], {})[r["arm"]] = r["ttt_median"]
    signs = []
    for w in sorted(by_w):
        t = by_w[w]
        if ref in t and other in t and not (math.isinf(t[ref]) and math.isinf(t[other])) and t[ref] != t[other]:
            signs.append((w, ref if t[ref] < t[other] else other))
    faster_at = dict(signs)
    for (w0, a0), (w1, a1) in itertools.pairwise(signs):
        if a0 != a1:
            return {"between": [w0, w1], "faster_at": faster_at, "text": f"{a0} is faster at {_n_workers(w0)}, "
                    f"{a1} at {_n_workers(w1)}: the measured crossover lies between {w0} and {w1} workers"}
    if not signs:
        return {"between": None, "faster_at": faster_at,
                "text": "no worker count where one of the two reached the target sooner"}
    ws = [w for w, _ in signs]
    span = f"{ws[0]}" if len(ws) == 1 else f"{min(ws)}-{max(ws)}"
    return {"between": None, "faster_at": faster_at, "text": f"no measured crossover: {signs[0][1]} is faster at "
            f"every measured worker count where one of them solved ({span})"}


def build(arms: list[str], workers: list[int], records: list[Any], rows: list[dict[str, Any]], kind: str,
          target: float | None, model_crossovers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The structured verdict; `text` holds it in plain words (the report's opening section)."""
    ref = "es" if "es" in arms else arms[0]
    entries = [per_workers(arms, records, w, kind) for w in sorted(workers)]
    crossovers = []
    for other in arms:
        if other == ref:
            continue
        m = measured_crossover(ref, other, rows)
        mc = dict(model_crossovers.get(other, {}))
        disagree = [w for w, a in m["faster_at"].items() if mc.get("faster_at", {}).get(w, a) != a]
        if disagree and "text" in mc:
            mc["text"] += (f"; at {', '.join(map(str, disagree))} worker(s) the model's order disagrees with the "
                           "measured one (see the residuals)")
        crossovers.append({"arms": [ref, other], "measured_between": m["between"], "measured": m["text"],
                           "model_workers": mc.get("workers"), "model_band": mc.get("band"),
                           "model": mc.get("text", "the model has no fit for one of the two arms")})
    ok = [r for r in records if r.status == "ok"]
    unconfirmed = sum(r.solved_eval and r.summary.get("confirmed") is False for r in ok)
    failed_hits = sum(int(r.summary.get("unconfirmed_hits") or 0) for r in ok)
    no_record = sum(r.solved_eval and "confirmed" not in r.summary for r in ok)
    seeds = min((e["arms"][a]["runs"] for e in entries for a in arms if e["arms"][a]["runs"]), default=0)
    lines = [e["text"] for e in entries]
    lines += [f"{ref} against {c['arms'][1]}: {c['measured']}; {c['model']}." for c in crossovers]
    how = [f"How sure: {seeds} finished seed(s) in the smallest group; {interval_note(kind)}."]
    if seeds < MIN_SEEDS_CALL:
        how.append(f"With fewer than {MIN_SEEDS_CALL} seeds per group no ordering above is established; "
                   "run more seeds (--seeds).")
    if target is None:
        how.append("The sweep has no target return: nothing can count as solved.")
    how.append("A run counts as solved only when its solve was confirmed on fresh episodes"
               + (f"; {failed_hits} evaluation(s) reached the target and failed their confirmation, and those "
                  "runs trained on" if failed_hits else "")
               + (f"; {unconfirmed} run(s) reached the target in evaluation but failed confirmation" if unconfirmed
                  else "")
               + (f"; {no_record} run(s) reached it but carry no confirmation (written before confirmation "
                  "existed) and count as unsolved" if no_record else "") + ".")
    lines.append(" ".join(how))
    return {"reference": ref, "target_return": target, "interval": kind, "by_workers": entries,
            "crossovers": crossovers, "text": "\n".join(f"- {x}" for x in lines)}
