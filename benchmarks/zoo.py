"""The zoo table, measured: every preset in configs/zoo/ run on its env's budget, beside Stable-Baselines3.

Each row is an (algorithm, env) pair: every preset of the zoo (`esrl.zoo.entries()`), run as an ordinary
`esrl train ALGO --env ENV --workers 2 --seed S --max-seconds B --run-dir DIR --quiet` in a subprocess (so it
goes through the preset selection a user gets; its config.json records the preset it used), and, where the
RL Baselines3 Zoo has a setting for that env, Stable-Baselines3's A2C, PPO and DQN with the zoo's settings
on the same budget and seeds (benchmarks/sb3_baseline.py, measured by esrl's protocol). Budgets per env
class (issue 15): classic control 300 s x 3 seeds; Box2D 600 s x 3 seeds; MuJoCo 1200 s, 3 seeds for ES and
2 for RL; Atari 3600 s x 1 seed, reported as the return reached rather than a solve. The target is the one
each run resolves (the env's reward_threshold, else its target_return in configs/zoo/envs.toml); a solve
counts when it is confirmed on the fresh confirmation episodes (100 by default).

The whole table is many hours of compute: run it a slice at a time (by class or by rows), each slice
appending one JSON line per run to its own file; a restarted slice skips the runs its file already holds.
    .venv/bin/python benchmarks/zoo.py --class classic --out benchmarks/results/zoo-classic.jsonl
    .venv/bin/python benchmarks/zoo.py --rows es:Pendulum-v1,sb3-ppo:Pendulum-v1 --out FILE.jsonl
        [--seeds N] [--workers 2] [--budget-scale 1.0] [--sb3 a2c,ppo,dqn | --no-sb3] [--runs-dir runs/zoo]
    .venv/bin/python benchmarks/zoo.py plan [--class C]          (the rows, their commands and budgets)
    .venv/bin/python benchmarks/zoo.py render FILE.jsonl... --doc docs/zoo.md
    .venv/bin/python benchmarks/zoo.py --dry-run --out /tmp/zoo-dry.jsonl   (3 s budgets, 1 seed, 2 rows)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

CLASSES = ("classic", "box2d", "mujoco", "atari")
CLASS_NAMES = {"classic": "classic control", "box2d": "Box2D", "mujoco": "MuJoCo", "atari": "Atari"}


@dataclasses.dataclass(frozen=True)
class Budget:
    seconds: float
    es_seeds: int
    rl_seeds: int  # A3C, DQN, Dyna-Q and the Stable-Baselines3 arms


BUDGETS = {"classic": Budget(300, 3, 3), "box2d": Budget(600, 3, 3), "mujoco": Budget(1200, 3, 2),
           "atari": Budget(3600, 1, 1)}
BOX2D_PREFIXES = ("LunarLander", "BipedalWalker", "CarRacing")
# the envs in its order; others follow by name
ENV_ORDER = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Pendulum-v1",
             "LunarLander-v3", "LunarLanderContinuous-v3", "BipedalWalker-v3", "InvertedPendulum-v5", "Hopper-v5",
             "HalfCheetah-v5", "Walker2d-v5", "Swimmer-v5", "ALE/Pong-v5")
ESRL_ARMS = ("es", "a3c", "dqn", "dynaq")
SB3_ALGOS = ("a2c", "ppo", "dqn")
ARMS = ESRL_ARMS + tuple(f"sb3-{a}" for a in SB3_ALGOS)
# --dry-run: a fast smoke run of the whole path (numbers meaningless; rendered as "dry run")
DRY: dict[str, Any] = {"seconds": 3.0, "seeds": 1, "rows": 2, "eval_episodes": 2, "confirm_episodes": 3}
BEGIN, END = "<!-- generated:zoo -->", "<!-- /generated:zoo -->"
SPACES_BEGIN, SPACES_END = "<!-- generated:tune_spaces -->", "<!-- /generated:tune_spaces -->"


def env_class(env_id: str) -> str:
    from esrl import envs

    if envs.is_atari(env_id):
        return "atari"
    if envs.is_mujoco(env_id):
        return "mujoco"
    if env_id.startswith(BOX2D_PREFIXES):
        return "box2d"
    return "classic"


def _env_key(env_id: str) -> tuple[int, int, str]:
    order = ENV_ORDER.index(env_id) if env_id in ENV_ORDER else len(ENV_ORDER)
    return CLASSES.index(env_class(env_id)), order, env_id


def _arm_key(arm: str) -> int:
    return ARMS.index(arm) if arm in ARMS else len(ARMS)


@dataclasses.dataclass(frozen=True)
class Row:
    arm: str  # es, a3c, dqn, dynaq, sb3-a2c, sb3-ppo, sb3-dqn
    env: str

    @property
    def sb3(self) -> bool:
        return self.arm.startswith("sb3-")

    @property
    def algo(self) -> str:
        return self.arm[4:] if self.sb3 else self.arm

    @property
    def spec(self) -> str:
        return f"{self.arm}:{self.env}"

    def seeds(self) -> int:
        b = BUDGETS[env_class(self.env)]
        return b.es_seeds if self.arm == "es" else b.rl_seeds


def zoo_envs() -> list[str]:
    """The envs of the zoo: those with a preset, and those with measurement settings in envs.toml."""
    from esrl import zoo

    found = {env for _, env, _ in zoo.entries()}
    path = zoo.zoo_dir() / zoo.ENVS_FILE
    if path.is_file():
        found |= set(tomllib.loads(path.read_text()))
    return sorted(found, key=_env_key)


def planned_rows(sb3_algos: tuple[str, ...] = SB3_ALGOS) -> list[Row]:
    """Every preset of the zoo, and the SB3 arms the RL Zoo has a setting for on the zoo's envs."""
    from esrl import zoo
    from sb3_baseline import SETTINGS

    rows = {Row(algo, env) for algo, env, _ in zoo.entries()}
    rows |= {Row(f"sb3-{a}", env) for env in zoo_envs() for a in sb3_algos if (a, env) in SETTINGS}
    return sorted(rows, key=lambda r: (_env_key(r.env), _arm_key(r.arm)))


def parse_rows(text: str) -> list[Row]:
    from sb3_baseline import SETTINGS

    rows = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        arm, sep, env = item.partition(":")
        if not sep or not env:
            raise SystemExit(f"error: rows: {item!r} is not ALGO:ENV (e.g. es:Pendulum-v1, sb3-ppo:Pendulum-v1)")
        if arm not in ARMS:
            raise SystemExit(f"error: rows: unknown algorithm {arm!r} (accepted: {', '.join(ARMS)})")
        row = Row(arm, env)
        if row.sb3 and (row.algo, env) not in SETTINGS:
            raise SystemExit(f"error: rows: the RL Zoo has no {row.algo} setting for {env} here")
        rows.append(row)
    return rows


def target_of(env_id: str) -> float | None:
    """The target a run of this env resolves: the env's reward_threshold, else envs.toml's target_return."""
    import gymnasium as gym

    from esrl import envs, zoo

    envs.is_atari(env_id)  # registers ale-py's ids
    settings = zoo.env_settings(env_id)
    if settings.get("target_return") is not None:
        return float(settings["target_return"])
    try:
        thr = gym.spec(env_id).reward_threshold
    except gym.error.Error:
        return None
    return None if thr is None else float(thr)


# ----------------------------------------------------------------------------------------- running

def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def commit_info() -> dict[str, Any]:
    from provenance import commit

    ct = _git("show", "-s", "--format=%ct", "HEAD")
    return {"commit": commit(), "commit_time": int(ct) if ct.isdigit() else None}


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in ("esrl", "torch", "gymnasium", "stable_baselines3", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _esrl_exe() -> list[str]:
    exe = Path(sys.executable).parent / "esrl"
    return [str(exe)] if exe.is_file() else [sys.executable, "-c", "import sys; from esrl.cli import main; "
                                                                   "sys.exit(main())"]


def run_key(line: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two runs the same run (a restarted slice skips it)."""
    return (line["arm"], line["env"], line["seed"], float(line["budget_s"]), line.get("workers"),
            bool(line.get("dry_run")))


def read_lines(paths: list[str | Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            continue
        for text in path.read_text().splitlines():
            if text.startswith("{"):
                try:
                    out.append(json.loads(text))
                except json.JSONDecodeError:  # a line cut by a kill: that run is simply run again
                    continue
    return out


def _append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


SUMMARY_KEYS = ("target_return", "solved", "confirmed", "confirmed_return", "confirm_episodes", "threshold_return",
                "time_to_threshold_s", "env_steps_to_threshold", "episodes_to_threshold", "env_steps", "episodes",
                "best_eval_return", "final_eval_return", "evaluations", "eval_s", "training_s", "wall_s",
                "stop_reason", "bytes_total", "bytes_per_env_step", "transport", "unconfirmed_hits", "first_hit_s")


def build_command(row: Row, seed: int, budget_s: float, workers: int, run_dir: Path, dry_run: bool
                  ) -> tuple[list[str], list[str]]:
    """(argv to execute, argv as recorded: `esrl ...` / `python benchmarks/...`)."""
    extra = ["--eval-episodes", str(DRY["eval_episodes"]), "--confirm-episodes", str(DRY["confirm_episodes"])
             ] if dry_run else []
    if row.sb3:
        args = [row.algo, row.env, "--seed", str(seed), "--max-seconds", f"{budget_s:g}",
                "--summary", str(run_dir / "summary.json"), *extra]
        return ([sys.executable, str(HERE / "sb3_baseline.py"), *args],
                ["python", "benchmarks/sb3_baseline.py", *args])
    args = ["train", row.algo, "--env", row.env, "--workers", str(workers), "--seed", str(seed),
            "--max-seconds", f"{budget_s:g}", "--run-dir", str(run_dir), "--quiet", *extra]
    if run_dir.exists():
        args.append("--overwrite")
    return [*_esrl_exe(), *args], ["esrl", *args]


def run_one(row: Row, seed: int, budget_s: float, workers: int, runs_dir: Path, dry_run: bool) -> dict[str, Any]:
    """One run in a subprocess; its JSON line (summary fields, or the error that stopped it)."""
    name = f"{row.arm}-{row.env.replace('/', '-')}-s{seed}-{budget_s:g}s" + ("-dry" if dry_run else "")
    run_dir = runs_dir / name
    argv, shown = build_command(row, seed, budget_s, workers, run_dir, dry_run)
    (run_dir / "summary.json").unlink(missing_ok=True)  # what is read afterwards is this run's, or nothing
    runs_dir.mkdir(parents=True, exist_ok=True)
    log = runs_dir / f"{name}.log"
    line: dict[str, Any] = {
        "bench": "zoo", "arm": row.arm, "framework": "sb3" if row.sb3 else "esrl", "algo": row.algo,
        "env": row.env, "env_class": env_class(row.env), "seed": seed, "budget_s": budget_s,
        "workers": None if row.sb3 else workers, "dry_run": dry_run, "command": shlex.join(shown),
        "run_dir": str(run_dir), **commit_info(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
    }
    # evaluations and the confirmation run off the training clock: allow for them generously
    timeout = 2 * budget_s + (120 if dry_run else 1800)
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            raise
    line.update(returncode=rc, elapsed_s=time.perf_counter() - t0, load_avg_1m_end=os.getloadavg()[0])
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if rc != 0 or summary is None or summary.get("stop_reason") == "interrupted":
        tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.is_file() else []
        line["error"] = (f"timed out after {timeout:g} s" if rc is None else
                         f"exit code {rc}" + (": " + " | ".join(tail) if tail else ""))
    if summary is not None:
        line.update({k: summary.get(k) for k in SUMMARY_KEYS if k in summary})
        line["target"] = summary.get("target_return")
        if "workers" in summary:
            line["workers_resolved"] = summary["workers"]
    if row.sb3:
        from sb3_baseline import SETTINGS, zoo_source

        line["preset"] = zoo_source(row.algo, row.env)
        line["zoo_setting"] = SETTINGS[(row.algo, row.env)]
        line["n_envs"] = SETTINGS[(row.algo, row.env)].get("n_envs", 1)
        if summary is not None:
            line["total_timesteps"] = summary.get("total_timesteps")
            line["torch_threads"] = summary.get("torch_threads")
    else:
        config = run_dir / "config.json"
        if config.is_file():
            line["preset"] = json.loads(config.read_text()).get("run", {}).get("preset")
    return line


def select(args: argparse.Namespace) -> list[Row]:
    sb3 = () if args.no_sb3 else tuple(a for a in args.sb3.split(",") if a)
    for a in sb3:
        if a not in SB3_ALGOS:
            raise SystemExit(f"error: sb3: unknown algorithm {a!r} (accepted: {', '.join(SB3_ALGOS)})")
    if args.rows:
        rows = parse_rows(args.rows)
    else:
        rows = [r for r in planned_rows(sb3) if not r.sb3 or r.algo in sb3]
    if args.classes:
        wanted = args.classes.split(",")
        for c in wanted:
            if c not in CLASSES:
                raise SystemExit(f"error: class: unknown env class {c!r} (accepted: {', '.join(CLASSES)})")
        rows = [r for r in rows if env_class(r.env) in wanted]
    if args.dry_run and not args.rows:
        rows = rows[:DRY["rows"]]
    return rows


def budget_of(row: Row, args: argparse.Namespace) -> float:
    if args.dry_run:
        return DRY["seconds"]
    return BUDGETS[env_class(row.env)].seconds * args.budget_scale


def seeds_of(row: Row, args: argparse.Namespace) -> int:
    if args.seeds:
        return args.seeds
    return DRY["seeds"] if args.dry_run else row.seeds()


def cmd_run(args: argparse.Namespace) -> int:
    from esrl import zoo

    rows = select(args)
    if not rows:
        print("zoo: no rows selected (is configs/zoo/ empty? ESRL_ZOO_DIR: "
              f"{os.environ.get('ESRL_ZOO_DIR', '-')})", file=sys.stderr)
        return 1
    known = {(a, e) for a, e, _ in zoo.entries()}
    for r in rows:
        if not r.sb3 and (r.arm, r.env) not in known:
            print(f"zoo: note: {r.spec} has no preset in {zoo.zoo_dir()}: it runs on the defaults", file=sys.stderr)
    out = Path(args.out)
    done = {run_key(r) for r in read_lines([out]) if r.get("bench") == "zoo" and not r.get("error")}
    # seeds interleaved across rows: a slice stopped part-way holds seed 0 of every row first
    plan = [(r, s) for s in range(max(seeds_of(r, args) for r in rows)) for r in rows if s < seeds_of(r, args)]
    todo = []
    for r, s in plan:
        key = (r.arm, r.env, s, float(budget_of(r, args)), None if r.sb3 else args.workers, args.dry_run)
        if key in done and not args.rerun:
            print(f"zoo: skip {r.spec} seed {s}: already in {out}", file=sys.stderr)
        else:
            todo.append((r, s))
    if not todo:
        return 0
    _append(out, {"bench": "zoo_meta", **commit_info(),
                  "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
                  "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                  "cpus": os.cpu_count(), "cpu": _cpu_model(), "load_avg_1m": os.getloadavg()[0],
                  "python": platform.python_version(), "versions": _versions(), "argv": sys.argv[1:],
                  "workers": args.workers, "budget_scale": args.budget_scale, "dry_run": args.dry_run,
                  "zoo_dir": str(zoo.zoo_dir()), "runs": len(todo)})
    def _stop(signum: int, frame: object) -> None:  # `kill` of the slice stops its run too (it has its own session)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    failed = 0
    for i, (r, s) in enumerate(todo, 1):
        budget = budget_of(r, args)
        print(f"zoo: [{i}/{len(todo)}] {r.spec} seed {s}, {budget:g} s ...", file=sys.stderr, flush=True)
        line = run_one(r, s, budget, args.workers, Path(args.runs_dir), args.dry_run)
        _append(out, line)
        failed += bool(line.get("error"))
        print(f"zoo:   {_outcome(line)}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def _outcome(line: dict[str, Any]) -> str:
    if line.get("error"):
        return f"failed: {line['error']}"
    ttt = line.get("time_to_threshold_s")
    return (f"solved={line.get('solved')} confirmed={line.get('confirmed')} "
            f"time_to_threshold={'-' if ttt is None else f'{ttt:.1f} s'} best={line.get('best_eval_return')} "
            f"final={line.get('final_eval_return')} (target {line.get('target')})")


def cmd_plan(args: argparse.Namespace) -> int:
    rows = select(args)
    total = 0.0
    for r in rows:
        n, b = seeds_of(r, args), budget_of(r, args)
        total += n * b
        print(f"{r.spec:36s} {CLASS_NAMES[env_class(r.env)]:16s} {n} x {b:g} s   "
              f"python benchmarks/zoo.py --rows {r.spec} --out FILE.jsonl")
    print(f"{len(rows)} rows, {total / 3600:.1f} h of budgets (evaluations and confirmations come on top)")
    return 0


# ----------------------------------------------------------------------------------------- rendering

def _rank(line: dict[str, Any]) -> tuple[bool, int, bool]:
    """Which of two results of one (arm, env, seed) the table shows: a real run over a dry run, then the later
    commit, then a run that finished over one that failed; on a tie the one read first stays."""
    return (not line.get("dry_run"), int(line.get("commit_time") or 0), not line.get("error"))


def latest(lines: list[dict[str, Any]]) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """(arm, env) -> seed -> the result the table shows."""
    chosen: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for line in lines:
        if line.get("bench") != "zoo":
            continue
        seeds = chosen[(line["arm"], line["env"])]
        old = seeds.get(line["seed"])
        if old is None or _rank(line) > _rank(old):
            seeds[line["seed"]] = line
    return chosen


def _num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _spread(values: list[float], fmt: Any, unit: str = "") -> str:
    """The median, and the range when there are several values: "20.0 s (10.0–30.0)"."""
    if not values:
        return "-"
    med = statistics.median(values)
    return fmt(med) + unit + ("" if len(values) == 1 else f" ({fmt(min(values))}–{fmt(max(values))})")


def _steps(x: float) -> str:
    return f"{x:,.0f}"


def _arm_label(arm: str, runs: list[dict[str, Any]]) -> str:
    label = f"sb3 {arm[4:]}" if arm.startswith("sb3-") else f"esrl {arm}"
    if runs and not arm.startswith("sb3-") and all(r.get("preset") in (None, "none") for r in runs):
        label += " (no preset)"
    return label


def _budget(runs: list[dict[str, Any]], row: Row) -> str:
    parts = []
    for r in runs:
        where = (f"1 process, {r.get('n_envs', 1)} envs" if r.get("framework") == "sb3"
                 else f"{r.get('workers')} worker" + ("s" if r.get("workers") != 1 else ""))
        parts.append(f"{r['budget_s']:g} s, {where}" + (" (dry run)" if r.get("dry_run") else ""))
    if not parts:
        b = BUDGETS[env_class(row.env)]
        n = row.seeds()
        parts = [f"{b.seconds:g} s x {n} seed" + ("s" if n != 1 else "")]
    return "; ".join(dict.fromkeys(parts))


def _commits(runs: list[dict[str, Any]]) -> tuple[str, str]:
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.get("commit", "?")] = counts.get(r.get("commit", "?"), 0) + 1
    commit = ", ".join(c if len(counts) == 1 else f"{c} ({n})" for c, n in counts.items())
    dates = sorted({r.get("date", "?") for r in runs})
    return commit, dates[0] if len(dates) == 1 else f"{dates[0]}–{dates[-1]}"


def render_table(lines: list[dict[str, Any]], rows: list[Row] | None = None) -> str:
    """The generated part of docs/zoo.md: a verdict per esrl arm, then one row per (env, algorithm)."""
    chosen = latest(lines)
    planned = planned_rows() if rows is None else rows
    all_rows = set(planned) | {Row(arm, env) for arm, env in chosen}
    ordered = sorted(all_rows, key=lambda r: (_env_key(r.env), _arm_key(r.arm)))
    head = ["| env | class | algorithm | target | solved / seeds (confirmed) | time to threshold, median "
            "(min–max), confirmed runs | env steps to threshold, median (min–max) | best / final return, median | "
            "budget | commit | date |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    body = []
    verdict: dict[str, list[str]] = defaultdict(list)  # arm -> per env: solved / short / not run
    for row in ordered:
        runs = [chosen[(row.arm, row.env)][s] for s in sorted(chosen.get((row.arm, row.env), {}))]
        cls = env_class(row.env)
        cmd = f"`python benchmarks/zoo.py --rows {row.spec} --out FILE.jsonl`"
        targets = sorted({r.get("target") for r in runs if not r.get("error")}, key=lambda t: (t is None, t or 0))
        if not targets:
            targets = [target_of(row.env)]
        target = " / ".join("none" if t is None else f"{t:g}" for t in targets)
        if cls == "atari" and targets == [None]:
            target = "none (return reached)"
        if not runs:
            body.append(f"| {row.env} | {CLASS_NAMES[cls]} | {_arm_label(row.arm, runs)} | {target} | not run yet: "
                        f"{cmd} | - | - | - | {_budget(runs, row)} | - | - |")
            if cls != "atari":
                verdict[row.arm].append("not run")
            continue
        ok = [r for r in runs if not r.get("error")]
        confirmed = [r for r in ok if r.get("confirmed")]
        reached = sum(bool(r.get("solved")) for r in ok)
        failed = len(runs) - len(ok)
        missing = max(0, row.seeds() - len(runs)) if not any(r.get("dry_run") for r in runs) else 0
        notes = []
        if reached > len(confirmed):
            notes.append(f"{reached - len(confirmed)} more reached the target but failed the confirmation")
        never = sum(not r.get("solved") and (r.get("unconfirmed_hits") or 0) > 0 for r in ok)
        if never:  # confirmed at the hit: these reached the target in evaluation, and no confirmation held
            notes.append(f"{never} more reached the target in evaluation but failed every confirmation")
        if failed:
            notes.append(f"{failed} crashed or timed out")
        if missing:
            notes.append(f"{missing} more seeds not run yet: {cmd}")
        if cls == "atari":
            solved = f"n/a: return reached, {len(runs)} seeds"
        else:
            solved = f"{len(confirmed)}/{len(runs)}"
        solved += f" ({'; '.join(notes)})" if notes else ""
        times = [r["time_to_threshold_s"] for r in confirmed if r.get("time_to_threshold_s") is not None]
        steps = [r["env_steps_to_threshold"] for r in confirmed if r.get("env_steps_to_threshold") is not None]
        ttt = _spread(times, lambda x: f"{x:,.1f}", " s") if cls != "atari" else "-"
        st = _spread(steps, _steps) if cls != "atari" else "-"
        best = [r["best_eval_return"] for r in ok if r.get("best_eval_return") is not None]
        final = [r["final_eval_return"] for r in ok if r.get("final_eval_return") is not None]
        ret = f"{_num(statistics.median(best) if best else None)} / {_num(statistics.median(final) if final else None)}"
        commit, date = _commits(runs)
        body.append(f"| {row.env} | {CLASS_NAMES[cls]} | {_arm_label(row.arm, runs)} | {target} | {solved} | {ttt} | "
                    f"{st} | {ret} | {_budget(runs, row)} | {commit} | {date} |")
        if cls != "atari":  # the goal: confirmed on at least 2 seeds (both where 2 are planned)
            if any(r.get("dry_run") for r in runs):
                verdict[row.arm].append("not run")
            elif len(confirmed) >= min(2, row.seeds()):
                verdict[row.arm].append("solved")
            else:
                verdict[row.arm].append("running" if missing else "short")
    lines_out = []
    for arm in ("es", "a3c"):
        v = verdict.get(arm, [])
        if v:
            measured = v.count("solved") + v.count("short")
            lines_out.append(
                f"- **esrl {arm}** solved {v.count('solved')} of the {measured} envs measured so far (a solve: "
                f"confirmed on at least 2 seeds){_also(v)}." if measured else
                f"- **esrl {arm}**: no env measured yet{_also(v)}.")
    loads = sorted(r.get("load_avg_1m", 0.0) for seeds in chosen.values() for r in seeds.values())
    foot = (f"\nLoad average (1 min) when each run started: {loads[0]:.1f}–{loads[-1]:.1f} "
            f"(median {statistics.median(loads):.1f}).\n" if loads else "\n")
    return "\n".join(lines_out) + ("\n\n" if lines_out else "") + "\n".join(head + body) + "\n" + foot


def _also(verdict: list[str]) -> str:
    parts = [f"{verdict.count('running')} with seeds still to run"] if verdict.count("running") else []
    if verdict.count("not run"):
        parts.append(f"{verdict.count('not run')} not run yet")
    return "; " + ", ".join(parts) if parts else ""


def cmd_render(args: argparse.Namespace) -> int:
    doc = Path(args.doc)
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"error: {doc} has no {BEGIN} ... {END} block")
    table = render_table(read_lines(args.inputs))
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: f"{BEGIN}\n{table}{END}", text, flags=re.S)
    if SPACES_BEGIN in text and SPACES_END in text:  # esrl tune's ranges, from the table in esrl.tune_space
        from esrl.tune_space import SPACES, markdown

        names = {"es": "OpenAI-ES", "a3c": "A3C", "dqn": "Parallel DQN", "dynaq": "Parallel Dyna-Q"}
        spaces = "\n".join(f"**{names.get(algo, algo)}**\n\n{markdown(algo)}" for algo in SPACES)
        text = re.sub(re.escape(SPACES_BEGIN) + ".*?" + re.escape(SPACES_END),
                      lambda _: f"{SPACES_BEGIN}\n{spaces}\n{SPACES_END}", text, flags=re.S)
    doc.write_text(text)
    return 0


def _selection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--class", dest="classes", default="", help="env classes, comma-separated: " + ", ".join(CLASSES))
    p.add_argument("--rows", default="", help="ALGO:ENV pairs, comma-separated (es:Pendulum-v1,sb3-ppo:Pendulum-v1); "
                   "ALGO is one of " + ", ".join(ARMS))
    p.add_argument("--sb3", default=",".join(SB3_ALGOS), help="the Stable-Baselines3 arms to run beside the presets")
    p.add_argument("--no-sb3", action="store_true", help="no Stable-Baselines3 arms")
    p.add_argument("--seeds", type=int, default=0, help="seeds 0..N-1 for every row (default: the class's)")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every class budget")
    p.add_argument("--workers", type=int, default=2, help="esrl workers per run")
    p.add_argument("--dry-run", action="store_true",
                   help=f"{DRY['seconds']:g} s budgets, {DRY['seeds']} seed, the first {DRY['rows']} rows, "
                   f"{DRY['confirm_episodes']} confirmation episodes: checks the path, measures nothing")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("run", "render", "plan", "-h", "--help"):
        argv = ["run", *argv]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a slice of the table (the default command)")
    _selection_options(run)
    run.add_argument("--out", default="benchmarks/results/zoo.jsonl", help="JSON-lines file the runs are appended to")
    run.add_argument("--runs-dir", default="runs/zoo", help="where the run directories and logs go")
    run.add_argument("--rerun", action="store_true", help="run again what the --out file already holds")
    plan = sub.add_parser("plan", help="list the rows a selection runs, with their budgets")
    _selection_options(plan)
    render = sub.add_parser("render", help="merge result files into the table of docs/zoo.md")
    render.add_argument("inputs", nargs="*", help="JSON-lines files of zoo.py runs (none: every row not run yet)")
    render.add_argument("--doc", default="docs/zoo.md")
    args = parser.parse_args(argv)
    return {"run": cmd_run, "plan": cmd_plan, "render": cmd_render}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
