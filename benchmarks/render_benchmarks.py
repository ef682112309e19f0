"""Regenerate a table of docs/benchmarks.md from a benchmark's JSON lines (never typed by hand).

    .venv/bin/python benchmarks/render_benchmarks.py time_to_solve OUT.jsonl [OUT2.jsonl ...] [--doc docs/benchmarks.md]

Replaces the text between `<!-- generated:NAME -->` and `<!-- end:NAME -->` in the document
with a table built from the runs' JSON lines: one row per configuration, with the commit,
date and seed count of the run that measured it and the spread over seeds.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any


def _lines(paths: list[str]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        for line in Path(p).read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def time_to_solve_table(records: list[dict[str, Any]], withdrawn: dict[str, str] | None = None) -> str:
    """One row per (env, arm, backend, workers): confirmed solves, median and range of time and env steps.

    `withdrawn`: algorithm -> why its rows measured at the commits listed in it are left out (a bug
    found later); rows of that algorithm from other commits stay."""
    withdrawn = withdrawn or {}
    metas = [r for r in records if r.get("bench") == "time_to_solve_meta"]
    runs = [r for r in records if r.get("bench") == "time_to_solve"]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    meta_of: dict[tuple[Any, ...], dict[str, Any]] = {}
    meta: dict[str, Any] = {}
    for r in records:  # a run's meta line comes before its runs
        if r.get("bench") == "time_to_solve_meta":
            meta = r
        elif r.get("bench") == "time_to_solve":
            if r["algo"] in withdrawn and meta.get("commit") in withdrawn[r["algo"]].split(":")[0].split(","):
                continue
            opts = "".join(f" {k}={v}" for k, v in sorted((r.get("options") or {}).items()))
            key = (r["env"], r["algo"] + (f":{r['sync']}" if r.get("sync") else "") + opts,
                   r.get("backend", "processes"), r["workers"])
            groups[key].append(r)
            meta_of[key] = meta
    if not runs:
        raise SystemExit("no time_to_solve lines in the input")
    rows = ["| env (target) | arm | backend | workers | seeds | reached target in evaluation | confirmed on 100 "
            "episodes | median time-to-threshold, confirmed runs (min-max) | median env steps to threshold "
            "(min-max) | budget | commit, date |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3])):
        env, arm, backend, workers = key
        rs, m = groups[key], meta_of[key]
        ok = [r for r in rs if r.get("confirmed")]
        times = [r["time_to_threshold_s"] for r in ok]
        steps = [r["env_steps_to_threshold"] for r in ok if r.get("env_steps_to_threshold") is not None]
        t = (f"{_fmt(statistics.median(times))} s ({_fmt(min(times))}-{_fmt(max(times))})" if times else "-")
        st = (f"{statistics.median(steps):,.0f} ({min(steps):,}-{max(steps):,})" if steps else "-")
        rows.append(f"| {env} ({rs[0]['target']:g}) | {arm} | {backend} | {workers} | {len(rs)} | "
                    f"{sum(bool(r['solved']) for r in rs)}/{len(rs)} | {len(ok)}/{len(rs)} | {t} | {st} | "
                    f"{m.get('max_seconds', '-'):g} s | {m.get('commit', '?')}, {m.get('date', '?')} |")
    loads = sorted({round(m.get("load_avg_1m", 0.0), 1) for m in metas})
    notes = "".join(f"\nWithdrawn: the {algo} rows measured at {spec.split(':', 1)[0].replace(',', ', ')}: "
                    f"{spec.split(':', 1)[1].strip()}\n" for algo, spec in sorted(withdrawn.items()))
    return ("\n".join(rows) + f"\n\nLoad average (1 min) when each benchmark started: {', '.join(map(str, loads))}.\n"
            + notes)


RENDERERS = {"time_to_solve": time_to_solve_table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(RENDERERS))
    parser.add_argument("inputs", nargs="+", help="JSON-lines files a benchmark printed")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    parser.add_argument("--withdraw", action="append", default=[], metavar="ALGO=COMMIT[,COMMIT]:WHY",
                        help="leave out ALGO's rows measured at those commits, saying why under the table")
    args = parser.parse_args()
    doc = Path(args.doc)
    text = doc.read_text()
    begin, end = f"<!-- generated:{args.name} -->", f"<!-- end:{args.name} -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{doc} has no {begin} ... {end} block")
    withdrawn = dict(w.split("=", 1) for w in args.withdraw)
    table = RENDERERS[args.name](_lines(args.inputs), withdrawn)
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{table}{end}", text, flags=re.S)
    doc.write_text(text)


if __name__ == "__main__":
    main()
