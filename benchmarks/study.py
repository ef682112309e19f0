"""The study past one machine: ES and A3C at 1 to 1,024 simulated workers on 1 and 10 Gbit/s networks.

Tests the ES paper's claim (Salimans et al. 2017: ES scales near-linearly to 1,000+ workers, while
gradient-sharing RL saturates on bandwidth) with the simulated cluster (`--backend simulated`): the
real algorithms on N logical workers, time from a cost model calibrated on this machine. Each point is
an ordinary `esrl train` run in a subprocess, its command recorded beside its figures:
- ES with population max(preset, 2 x N): one mirrored pair per worker at least, the paper's scaling.
- A3C on a parameter server (`--sync param-server`, one shard): shared memory does not span machines.
- CartPole-v1 and Acrobot-v1: time to the env's threshold, confirmed on 100 fresh episodes.
- HalfCheetah-v5: throughput only (ES 2 generations; A3C 160 env steps per worker, at least 20,000): a
  run to 4,800 is hours of real compute per point, since the simulator really runs every episode.
Every point of one (env, algorithm), every seed, reads the cost model its seed-0 1-worker, 10 Gbit/s
point calibrated (`--sim-costs`), so speedups and seeds hold no calibration noise. One JSON line per point; a restarted run skips
the points its file holds. `render` writes the tables of docs/study.md between its generated markers.
    .venv/bin/python benchmarks/study.py --envs CartPole-v1 --out benchmarks/results/study.jsonl
        [--workers 1,4,16,64,256,1024] [--nets 1,10] [--arms es,a3c] [--seed 0] [--runs-dir runs/study]
    .venv/bin/python benchmarks/study.py render benchmarks/results/study*.jsonl --doc docs/study.md
        [--checks benchmarks/results/sim_validation.jsonl benchmarks/results/sim_network.jsonl ...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import provenance

ROOT = Path(__file__).resolve().parent.parent
ENVS = {"CartPole-v1": "threshold", "Acrobot-v1": "threshold", "HalfCheetah-v5": "throughput"}
WORKERS = (1, 4, 16, 64, 256, 1024)
NETS = (1.0, 10.0)
# threshold runs: caps that end a run that will not get there (virtual seconds, env steps); A3C's real cost per
# simulated env step is some 30x ES's (an update per 20 steps, each worker's step in its own thread)
CAPS = {("CartPole-v1", "es"): (1800, 30_000_000), ("CartPole-v1", "a3c"): (1800, 1_000_000),
        ("Acrobot-v1", "es"): (1800, 30_000_000), ("Acrobot-v1", "a3c"): (1800, 2_000_000)}
BEGIN, END = "<!-- generated:study -->", "<!-- /generated:study -->"
CHECKS_BEGIN, CHECKS_END = "<!-- generated:checks -->", "<!-- /generated:checks -->"


def es_population(env: str, workers: int) -> int:
    from esrl import zoo
    from esrl.config import ESConfig

    preset = zoo.algo_preset("es", env)[0]
    return max(int(preset.get("population", ESConfig.population)), 2 * workers)


def command(env: str, arm: str, workers: int, gbit: float, seed: int, run_dir: Path, costs: str) -> list[str]:
    cmd = ["esrl", "train", arm, "--env", env, "--backend", "simulated", "--workers", str(workers),
           "--bandwidth-gbit", f"{gbit:g}", "--seed", str(seed), "--run-dir", str(run_dir), "--quiet", "--overwrite"]
    if arm == "es":
        cmd += ["--population", str(es_population(env, workers))]
    else:
        cmd += ["--sync", "param-server"]
    if ENVS[env] == "threshold":
        vs, steps = CAPS[(env, arm)]
        cmd += ["--max-seconds", str(vs), "--max-env-steps", str(steps)]
    else:
        cmd += ["--target-return", "1e9", "--max-seconds", "0", "--eval-every-steps", str(10**12),
                "--confirm-episodes", "0"]
        cmd += ["--max-iterations", "2"] if arm == "es" else ["--max-env-steps", str(max(20_000, 160 * workers))]
    if costs:
        cmd += ["--sim-costs", costs]
    return cmd


def run_point(env: str, arm: str, workers: int, gbit: float, seed: int, runs: Path, costs: str) -> dict[str, Any]:
    d = runs / f"{env}-{arm}-w{workers}-{gbit:g}gbit-s{seed}"
    cmd = command(env, arm, workers, gbit, seed, d, costs)
    t0 = time.perf_counter()
    exe = [sys.executable, "-m", "esrl.cli", *cmd[1:]]
    proc = subprocess.run(exe, capture_output=True, text=True)
    real = time.perf_counter() - t0
    rec: dict[str, Any] = {"env": env, "arm": arm, "workers": workers, "bandwidth_gbit": gbit, "seed": seed,
                           "command": shlex.join(cmd), "real_s": real, **provenance.stamp()}
    if proc.returncode:
        return {**rec, "error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    s = json.loads((d / "summary.json").read_text())
    conf = json.loads((d / "config.json").read_text())
    keys = ("solved", "confirmed", "time_to_threshold_s", "env_steps_to_threshold", "env_steps", "training_s",
            "wall_s", "bytes_total", "bytes_startup", "messages_total", "best_eval_return", "stop_reason", "clock")
    return {**rec, **{k: s.get(k) for k in keys}, "run_dir": str(d), "iterations": s.get("iterations"),
            "eval_s": s.get("eval_s"), "population": conf.get("es", {}).get("population")}


def load(paths: list[str]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        for line in Path(p).read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out


def main_run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    done = {(r["env"], r["arm"], r["workers"], r["bandwidth_gbit"], r["seed"]) for r in load([str(out)])
            } if out.exists() else set()
    runs = Path(args.runs_dir)
    workers = [int(w) for w in args.workers.split(",")]
    nets = [float(g) for g in args.nets.split(",")]
    for env in args.envs.split(","):
        if env not in ENVS:
            sys.exit(f"envs: unknown {env!r}; expected one of {', '.join(ENVS)}")
        for arm in args.arms.split(","):
            # one cost model per (env, algorithm): seed 0's 1-worker 10 Gbit/s point calibrates it, every other point
            # (other seeds too) reads it back
            seed0 = runs / f"{env}-{arm}-w1-10gbit-s0" / "config.json"
            costs = str(seed0 if seed0.is_file() else runs / f"{env}-{arm}-w1-10gbit-s{args.seed}" / "config.json")
            grid = [(1, 10.0)] + [(w, g) for g in nets for w in workers if (w, g) != (1, 10.0)]
            for w, g in grid:
                if (env, arm, w, g, args.seed) in done:
                    continue
                first = (w, g) == (1, 10.0) and not seed0.is_file()
                print(f"study: {env} {arm} workers={w} {g:g} Gbit/s", file=sys.stderr, flush=True)
                rec = run_point(env, arm, w, g, args.seed, runs, "" if first else costs)
                with out.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"study:   {rec.get('error') or rec.get('stop_reason')} in {rec['real_s']:.0f} s real",
                      file=sys.stderr, flush=True)


# --- render ---------------------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:,.0f}"


def _flag(cmd: str, name: str) -> str | None:
    words = shlex.split(cmd)
    return words[words.index(name) + 1] if name in words else None


def saturation(points: list[tuple[int, float]]) -> int | None:
    """The worker count past which 4x the workers gives less than 1.25x the throughput (None: it never does)."""
    for (w, s), (_, s_next) in itertools.pairwise(points):
        if s_next < 1.25 * s:
            return w
    return None


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _ttt(rs: list[dict[str, Any]], key: str = "time_to_threshold_s") -> float | None:
    """The median over seeds, an unconfirmed run counted as never (as the report counts it); None: never."""
    m = _median([float(r[key]) if r.get("confirmed") else math.inf for r in rs])
    return None if m is None or math.isinf(m) else m


def _rate(rs: list[dict[str, Any]]) -> float | None:
    return _median([r["env_steps"] / r["training_s"] for r in rs if r.get("training_s")])


def table(rows: list[dict[str, Any]], env: str, gbit: float) -> list[str]:
    """One table per arm: per worker count (medians over seeds) the time to threshold and its speedup, env steps
    per virtual second and its speedup and efficiency, bytes per env step; where the throughput saturates."""
    threshold = ENVS[env] == "threshold"
    out = []
    for arm in sorted({r["arm"] for r in rows}):
        pts = [r for r in rows if r["arm"] == arm and not r.get("error")]
        counts = sorted({r["workers"] for r in pts})
        if not counts:
            continue
        out += ["", f"**{arm}** at {gbit:g} Gbit/s." + (" Time to threshold and env steps to it: medians over seeds, "
                "a run not confirmed counted as never (-); the time's speedup over 1 worker." if threshold else "") + " Throughput: training env steps per virtual second, its speedup "
                "over 1 worker and efficiency (speedup / workers). Bytes: after start-up, per training env step.", "",
                "| workers | population | " + ("solved | time to threshold | speedup | env steps to threshold | "
                                              if threshold else "")
                + "env steps/s | speedup | efficiency | bytes per env step | real s |",
                "|---|---|" + ("---|---|---|---|" if threshold else "") + "---|---|---|---|---|"]
        by = {w: [r for r in pts if r["workers"] == w] for w in counts}

        t1, r1 = (_ttt(by[1]), _rate(by[1])) if 1 in by else (None, None)
        curve = []
        for w in counts:
            rs = by[w]
            t, rt = _ttt(rs), _rate(rs)
            up = rt / r1 if rt and r1 else None
            if up:
                curve.append((w, up))
            per = _median([((r["bytes_total"] or 0) - (r["bytes_startup"] or 0)) / r["env_steps"]
                           for r in rs if r.get("env_steps")])
            pop = rs[0].get("population") or _flag(rs[0]["command"], "--population")
            cells = [str(w), str(pop or "-")]
            if threshold:
                solved = sum(bool(r.get("confirmed")) for r in rs)
                best = max((r.get("best_eval_return") or float("-inf")) for r in rs)
                cells += [f"{solved}/{len(rs)}", f"{_fmt(t)} s" if t else f"- (best {_fmt(best)})",
                          _fmt(t1 / t if t and t1 else None),
                          _fmt(_ttt(rs, "env_steps_to_threshold"))]
            cells += [_fmt(rt), _fmt(up), _fmt(up / w if up else None), _fmt(per), f"{max(r['real_s'] for r in rs):.0f}"]
            out.append("| " + " | ".join(cells) + " |")
        sat = saturation(curve)
        out += ["", f"Throughput saturates: {'at ' + str(sat) + ' workers' if sat else 'not within the grid'} "
                "(past there, 4x the workers gives less than 1.25x the env steps per second)."]
    return out


def _replace(text: str, begin: str, end: str, lines: list[str], doc: Path) -> str:
    if begin not in text or end not in text:
        sys.exit(f"doc: {doc} has no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    return head + "\n".join([begin, *lines, end]) + rest.split(end, 1)[1]


def checks(records: list[dict[str, Any]], source: str) -> list[str]:
    """The simulator against reality, from one file of sim_validation.py, sim_network.py or sim_speed.py lines."""
    meta = next((r for r in records if r.get("name") in ("pipe", "link")), records[-1])
    stamp = f"Commit {meta.get('commit', 'unknown')}, {str(meta.get('date', ''))[:10]}, load average " \
            f"{meta.get('loadavg')}; `{source}`."
    rows = [r for r in records if r.get("name") not in ("pipe", "link")]
    if rows and "simulated_runs" in rows[0]:  # sim_validation.py
        net = f" The simulated network: this machine's pipe, {meta['latency_us']:.0f} us and " \
              f"{meta['bandwidth_gbit']:.1f} Gbit/s, measured in the same run."
        out = ["", "**Compute** (`benchmarks/sim_validation.py`): the processes backend against the simulated one "
               f"on the same config, {len(rows[0]['simulated_runs'])} runs each, alternating; medians.{net} {stamp}",
               "", "| comparison | simulated | measured | ratio | simulated runs | measured runs |", "|---|---|---|---|---|---|"]
        for r in rows:
            out.append(f"| {r['algo']} {r['metric']}, {r['workers']} worker(s) | {_fmt(r['simulated'])} | "
                       f"{_fmt(r['measured'])} | {r['ratio']:.2f} | {', '.join(_fmt(x) for x in r['simulated_runs'])}"
                       f" | {', '.join(_fmt(x) for x in r['measured_runs'])} |")
        return out
    if rows and "virtual_s" in rows[0]:  # sim_speed.py
        out = ["", f"**Speed of the simulator** (`benchmarks/sim_speed.py`, CartPole-v1). {stamp}", "",
               "| algorithm | workers | virtual s | real s | virtual s per real s | real env steps per s |",
               "|---|---|---|---|---|---|"]
        for r in rows:
            out.append(f"| {r['algo']} | {r['workers']} | {_fmt(r['virtual_s'])} | {_fmt(r['real_s'])} | "
                       f"{_fmt(r['ratio'])} | {_fmt(r['real_env_steps_per_s'])} |")
        return out
    out = ["", f"**Network** (`benchmarks/sim_network.py`): Ray on two network namespaces joined by a "
           f"{meta.get('bandwidth_mbit', 0):g} Mbit/s tbf-limited veth, the simulator at that bandwidth and the "
           f"veth's measured latency ({_fmt(meta.get('latency_us'))} us). A3C: updates per second; ES: seconds "
           f"per iteration, {'the median iteration' if any('measured_mean' in r for r in rows) else 'the mean'}. "
           f"{stamp}", "",
           "| case | A3C hidden | measured (Ray) | simulated | ratio | plain TCP | ratio to TCP | link busy (Ray) | "
           "bytes per update, counted / on the wire |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hidden = ", ".join(str(h) for h in r["hidden"]) if r.get("hidden") else "-"
        out.append(f"| {r['name']} | {hidden} | {_fmt(r['measured'])} | {_fmt(r['simulated'])} | {r['ratio']:.2f} | "
                   f"{_fmt(r.get('tcp'))} | {_fmt(r.get('ratio_tcp'))} | {_fmt(r.get('link_busy'))} | "
                   f"{_fmt(r.get('bytes_per_update'))} / {_fmt(r.get('wire_bytes_per_update'))} |")
    return out


def render(records: list[dict[str, Any]], doc: Path, check_files: list[str] | None = None) -> None:
    lines: list[str] = []
    for env in ENVS:
        env_rows = [r for r in records if r["env"] == env]
        if not env_rows:
            lines += ["", f"### {env}", "", "Not run yet: `python benchmarks/study.py --envs " + env
                      + " --out benchmarks/results/study.jsonl`."]
            continue
        for gbit in sorted({r["bandwidth_gbit"] for r in env_rows}):
            rows = [r for r in env_rows if r["bandwidth_gbit"] == gbit]
            commits = sorted({r["commit"] for r in rows})
            dates = sorted(r["date"][:10] for r in rows)
            lines += ["", f"### {env}, {gbit:g} Gbit/s", "",
                      f"Commit {', '.join(commits)}, {dates[0]}; seed {sorted({r['seed'] for r in rows})}. "
                      f"Each point's command, e.g.: `{rows[-1]['command']}`."]
            lines += table(rows, env, gbit)
    text = doc.read_text() if doc.exists() else f"# The study\n\n{BEGIN}\n{END}\n"
    text = _replace(text, BEGIN, END, lines, doc)
    if check_files:
        found: list[str] = []
        for f in check_files:
            recs = load([f])
            command = next((r["command"] for r in recs if r.get("name") in ("pipe", "link") and "command" in r),
                           f"python benchmarks/{_bench_of(recs)}")
            found += checks(recs, f"{command} > {f}")
        text = _replace(text, CHECKS_BEGIN, CHECKS_END, found, doc)
    doc.write_text(text)


def _bench_of(records: list[dict[str, Any]]) -> str:
    if any("simulated_runs" in r for r in records):
        return "sim_validation.py"
    return "sim_speed.py" if any("virtual_s" in r for r in records) else "sim_network.py"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "render":
        p = argparse.ArgumentParser(prog="study.py render")
        p.add_argument("files", nargs="+")
        p.add_argument("--doc", default=str(ROOT / "docs" / "study.md"))
        p.add_argument("--checks", nargs="*", default=[], help="sim_validation / sim_network / sim_speed JSON lines")
        a = p.parse_args(sys.argv[2:])
        render(load(a.files), Path(a.doc), a.checks)
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", default=",".join(ENVS))
    p.add_argument("--arms", default="es,a3c")
    p.add_argument("--workers", default=",".join(map(str, WORKERS)))
    p.add_argument("--nets", default=",".join(f"{g:g}" for g in NETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "study"))
    p.add_argument("--out", required=True)
    main_run(p.parse_args())


if __name__ == "__main__":
    main()
