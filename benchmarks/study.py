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
Every point of one (env, algorithm) reads the cost model its 1-worker, 10 Gbit/s point calibrated
(`--sim-costs`), so speedups hold no calibration noise. One JSON line per point; a restarted run skips
the points its file holds. `render` writes the tables of docs/study.md between its generated markers.
    .venv/bin/python benchmarks/study.py --envs CartPole-v1 --out benchmarks/results/study.jsonl
        [--workers 1,4,16,64,256,1024] [--nets 1,10] [--arms es,a3c] [--seed 0] [--runs-dir runs/study]
    .venv/bin/python benchmarks/study.py render benchmarks/results/study.jsonl --doc docs/study.md
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENVS = {"CartPole-v1": "threshold", "Acrobot-v1": "threshold", "HalfCheetah-v5": "throughput"}
WORKERS = (1, 4, 16, 64, 256, 1024)
NETS = (1.0, 10.0)
# threshold runs: caps that end a run that will not get there (virtual seconds, env steps); A3C's real cost per
# simulated env step is some 30x ES's (an update per 20 steps, each worker's step in its own thread)
CAPS = {("CartPole-v1", "es"): (1800, 30_000_000), ("CartPole-v1", "a3c"): (1800, 1_000_000),
        ("Acrobot-v1", "es"): (1800, 30_000_000), ("Acrobot-v1", "a3c"): (1800, 2_000_000)}
BEGIN, END = "<!-- generated:study -->", "<!-- /generated:study -->"


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


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_point(env: str, arm: str, workers: int, gbit: float, seed: int, runs: Path, costs: str) -> dict[str, Any]:
    d = runs / f"{env}-{arm}-w{workers}-{gbit:g}gbit-s{seed}"
    cmd = command(env, arm, workers, gbit, seed, d, costs)
    t0 = time.perf_counter()
    exe = [sys.executable, "-m", "esrl.cli", *cmd[1:]]
    proc = subprocess.run(exe, capture_output=True, text=True)
    real = time.perf_counter() - t0
    rec: dict[str, Any] = {"env": env, "arm": arm, "workers": workers, "bandwidth_gbit": gbit, "seed": seed,
                           "command": shlex.join(cmd), "real_s": real, "commit": commit(),
                           "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                           "loadavg": os.getloadavg()}
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
            costs = str(runs / f"{env}-{arm}-w1-10gbit-s{args.seed}" / "config.json")
            grid = [(1, 10.0)] + [(w, g) for g in nets for w in workers if (w, g) != (1, 10.0)]
            for w, g in grid:
                if (env, arm, w, g, args.seed) in done:
                    continue
                first = (w, g) == (1, 10.0)
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
    """The worker count past which 4x the workers gives less than 1.25x the speed (None: it never does)."""
    for (w, s), (_, s_next) in itertools.pairwise(points):
        if s_next < 1.25 * s:
            return w
    return None


def table(rows: list[dict[str, Any]], env: str, gbit: float) -> list[str]:
    mode = ENVS[env]
    arms = sorted({r["arm"] for r in rows})
    out = []
    for arm in arms:
        pts = sorted((r for r in rows if r["arm"] == arm and not r.get("error")), key=lambda r: r["workers"])
        if not pts:
            continue

        def speed(r: dict[str, Any]) -> float | None:
            if mode == "throughput":
                return r["env_steps"] / r["training_s"] if r.get("training_s") else None
            return 1 / r["time_to_threshold_s"] if r.get("confirmed") and r.get("time_to_threshold_s") else None

        base = next((speed(r) for r in pts if r["workers"] == 1), None)
        what = "env steps per virtual second" if mode == "throughput" else "time to threshold (virtual s)"
        out += ["", f"**{arm}** at {gbit:g} Gbit/s: {what}, speedup over 1 worker, efficiency (speedup / workers), "
                "bytes per env step.", "",
                "| workers | population | " + ("env steps/s" if mode == "throughput" else "time to threshold")
                + " | speedup | efficiency | bytes per env step | env steps | real s |",
                "|---|---|---|---|---|---|---|---|"]
        curve = []
        for r in pts:
            sp = speed(r)
            up = sp / base if sp and base else None
            if up:
                curve.append((r["workers"], up))
            if mode == "throughput":
                main = _fmt(sp)
            elif r.get("confirmed"):
                main = f"{_fmt(r['time_to_threshold_s'])} s"
            else:
                main = f"not solved ({r.get('stop_reason')}, best {_fmt(r.get('best_eval_return'))})"
            steady = (r["bytes_total"] or 0) - (r["bytes_startup"] or 0)
            steps = r["env_steps"] or 0
            pop = r.get("population") or _flag(r["command"], "--population")
            out.append(f"| {r['workers']} | {pop or '-'} | {main} | {_fmt(up)} | "
                       f"{_fmt(up / r['workers'] if up else None)} | {_fmt(steady / steps if steps else None)} | "
                       f"{steps:,} | {r['real_s']:.0f} |")
        sat = saturation(curve)
        out += ["", f"Saturates: {'at ' + str(sat) + ' workers' if sat else 'not within the grid'} "
                "(past there, 4x the workers gives less than 1.25x the speed)."]
    return out


def render(records: list[dict[str, Any]], doc: Path) -> None:
    lines: list[str] = [BEGIN]
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
    lines.append(END)
    text = doc.read_text() if doc.exists() else f"# The study\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        sys.exit(f"doc: {doc} has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    doc.write_text(head + "\n".join(lines) + rest.split(END, 1)[1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "render":
        p = argparse.ArgumentParser(prog="study.py render")
        p.add_argument("files", nargs="+")
        p.add_argument("--doc", default=str(ROOT / "docs" / "study.md"))
        a = p.parse_args(sys.argv[2:])
        render(load(a.files), Path(a.doc))
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
