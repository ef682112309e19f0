"""One prepared run for the accelerator machine (one GPU, 16 cores): GPU figures and real scaling in under 8 minutes.

Parts, each in its own process with its own time cap (none above 3 minutes), so that one slow
part cannot eat the rest; a part stopped at its cap keeps what it measured, marked `timed_out`:
  preflight             CUDA, the GPU and its free memory, cores, free RAM and disk, versions; esrl
                        imported with Ray, MuJoCo, ALE and SimPy refused (they are absent there)
  es_throughput         vectorized ES on CUDA: env steps/s of batched CartPole, Acrobot and Pendulum with
                        per-member policies, populations 4,096 to 1,048,576, beside the plain Gymnasium loop
  es_time_to_threshold  CartPole, 5 seeds: CUDA against the numpy CPU path (esrl.train, backend vectorized)
  rl_device             GA3C and the device DQN on CUDA against hogwild A3C and DQN, 14 actors, CartPole
  scaling_cartpole,     `esrl sweep` of es, a3c:hogwild, dqn:lock, dqn:hogwild, dqn:param-server at 1, 2, 4,
  scaling_acrobot       8 and 14 workers, then `esrl report` (speedup, efficiency, the scaling model)
The plan (per-run budgets, seeds, what was cut to fit each cap) and the expected time of every
part are printed before the first part starts. Writes under --out: summary.md, results.jsonl
(every record, one JSON object a line), sections/<part>.json, plan.json, logs/<part>.log,
sweeps/<env>/ (run directories and the reports) and runs/ (the other parts' run directories).

On the device machine (Python 3.12 and PyTorch there; no Gymnasium, no package index): run
`make device-bundle` here once, carry `.device-bundle` and run there
    PYTHONUNBUFFERED=1 python3 benchmarks/device_suite.py --out /tmp/device --archive $OUT/device-suite.tar.gz
Where Gymnasium is missing the suite first installs the bundled wheels into a temporary folder
(pip --no-index; unzipped if pip is missing: they are pure Python) and puts that folder and
src/ on the path of every part. `--dry-run`: the same code on the CPU with tiny sizes, CUDA
rows skipped with the reason (tests/test_device_suite.py runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
PARTS_SCRIPT = Path(__file__).resolve().parent / "device_parts.py"
BUNDLE_DIR = REPO / ".device-bundle"
# What the device machine lacks on the suite's paths (pyproject's other dependencies are there, or
# imported only by paths the suite does not take: Ray, MuJoCo, ALE, Box2D, imageio), pinned to the
# versions of this environment so that the device runs what the tests here ran.
BUNDLE = ("gymnasium", "cloudpickle", "farama-notifications", "typing_extensions")
NEEDED = ("gymnasium",)
BUNDLE_LIMIT = 64 * 2**20  # everything that travels to the device machine
BOOTSTRAP_CAP_S = 30
TOTAL_LIMIT_S = 480  # the full run must finish in under 8 minutes
PART_CAP_LIMIT_S = 180  # no part may run longer than 3 minutes
GRACE_S = 4  # a part is sent SIGTERM this long before its cap, then killed
MARGIN_S = 6  # a part stops starting work this long before its cap
DEVICE_FACTS = {"cuda": True, "cores": 16, "gpu_free_bytes": 78 * 2**30, "ram_available_bytes": 120 * 2**30}
NO_CUDA = "no CUDA device (torch.cuda.is_available() is False)"
SCALING_ARMS = ["es", "a3c:hogwild", "dqn:lock", "dqn:hogwild", "dqn:param-server"]
# Seconds to the target at 1 worker on the 2-core machine (docs/benchmarks.md; Acrobot guessed):
# the planner's estimates, used only to choose budgets that fit a cap.
SOLVE_1W = {"CartPole-v1": {"es": 1.5, "a3c": 2.0, "dqn": 20.0}, "Acrobot-v1": {"es": 6.0, "a3c": 8.0, "dqn": 30.0}}
BUDGETS = (30.0, 20.0, 15.0, 12.0, 10.0, 8.0, 6.0, 5.0, 4.0, 3.0)


# --- bootstrap and bundle (standard library only: this runs before anything is installed) ------

def bootstrap(wheels: Path, need: tuple[str, ...] = NEEDED, site: Path | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Make `need` importable (installing `wheels` into a temporary folder where missing) and esrl's src.

    Returns what was done and the environment for the parts (PYTHONPATH: that folder, then src).
    """
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    info: dict[str, Any] = {"missing": missing, "site": None, "method": None, "wheels": []}
    paths = []
    if missing:
        whls = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
        if not whls:
            raise SystemExit(f"device_suite: {', '.join(missing)} missing and no wheels in {wheels}: run "
                             "`make device-bundle` where PyPI is reachable and carry that folder")
        site = site or Path(tempfile.mkdtemp(prefix="esrl-device-site-"))
        info["site"], info["wheels"] = str(site), [w.name for w in whls]
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--disable-pip-version-check", "--target", str(site),
               "--find-links", str(wheels), *map(str, whls)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=BOOTSTRAP_CAP_S)
            ok, why = res.returncode == 0, (res.stderr.strip().splitlines() or ["?"])[-1]
        except (OSError, subprocess.TimeoutExpired) as exc:
            ok, why = False, str(exc)
        if ok:
            info["method"] = "pip --no-index --target"
        else:  # no pip: these wheels are pure Python, and a pure wheel installs by unzipping
            for w in whls:
                with zipfile.ZipFile(w) as z:
                    z.extractall(site)
            info["method"] = f"unzipped (pip failed: {why})"
        paths.append(str(site))
        sys.path.insert(0, str(site))
        importlib.invalidate_caches()
        still = [m for m in missing if importlib.util.find_spec(m) is None]
        if still:
            raise SystemExit(f"device_suite: {', '.join(still)} still missing after installing {wheels}")
    paths.append(str(SRC))
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    return info, env


def _norm(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def make_bundle(dest: Path) -> dict[str, Any]:
    """Download the wheels the device machine lacks (Python 3.12, manylinux x86-64) into `dest`."""
    from importlib import metadata

    pins = {_norm(d): metadata.version(d) for d in BUNDLE}
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
                    "-d", str(dest), *(f"{d}=={v}" for d, v in pins.items())], check=True)
    for w in dest.glob("*.whl"):  # one version of each, or pip refuses the install there
        name, version = w.name.split("-")[:2]
        if pins.get(_norm(name)) != version:
            w.unlink()
    wheels = {w.name: w.stat().st_size for w in sorted(dest.glob("*.whl"))}
    total = sum(wheels.values())
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    doc = {"wheels": wheels, "total_bytes": total, "limit_bytes": BUNDLE_LIMIT, "pins": pins, "commit": commit}
    (dest / "bundle.json").write_text(json.dumps(doc, indent=2) + "\n")
    if total > BUNDLE_LIMIT:
        raise SystemExit(f"device_suite: the bundle is {total / 2**20:.1f} MiB, over {BUNDLE_LIMIT / 2**20:.0f} MiB")
    return doc


# --- the plan -----------------------------------------------------------------------------------

def fit_budget(solve_s: list[float], seeds: int, time_s: float, overhead_s: float) -> tuple[int, float, float]:
    """(seeds, per-run budget, expected seconds) for one seed's runs, estimated to solve in `solve_s` seconds each.

    A run lasts min(budget, its estimate) plus a fixed overhead (start-up, evaluations,
    confirmation). The budget first: the longest of BUDGETS, at most twice the slowest estimate,
    whose one seed fits `time_s` (else the shortest: the cap cuts the rest); then as many seeds
    as fit, at most `seeds`.
    """
    def expected(b: float, s: int) -> float:
        return s * sum(min(b, t) + overhead_s for t in solve_s)

    fitting = [b for b in BUDGETS if b <= 2 * max(solve_s) and expected(b, 1) <= time_s]
    budget = fitting[0] if fitting else BUDGETS[-1]
    n = max([s for s in range(1, seeds + 1) if expected(budget, s) <= time_s], default=1)
    return n, budget, expected(budget, n)


def _part(name: str, title: str, cap: float, expected: float, params: dict[str, Any], cuts: list[str],
          skip: str | None = None) -> dict[str, Any]:
    return {"name": name, "title": title, "cap_s": cap, "expected_s": round(min(expected, cap), 1), "params": params,
            "cuts": cuts, "skip": skip}


def plan(dry: bool, facts: dict[str, Any]) -> list[dict[str, Any]]:
    """The parts, their caps, expected times and settings, for this machine's facts (preflight's)."""
    cuda, cores = bool(facts.get("cuda")), int(facts.get("cores") or 1)
    parts = [_part("preflight", "Checks: CUDA, GPU memory, cores, RAM, disk, versions, imports", 25, 8, {}, [])]

    # 1. vectorized ES on CUDA
    pops = [64, 256] if dry else [4096, 16384, 65536, 262144, 1048576]
    parts.append(_part("es_throughput", "Vectorized ES: env steps/s with per-member policies vs the plain Gymnasium loop",
                       30 if dry else 60, 8 if dry else 45,
                       {"envs": ["CartPole-v1", "Acrobot-v1", "Pendulum-v1"], "populations": pops,
                        "fused_populations": [64] if dry else [4096, 65536, 1048576, 4194304, 16777216],
                        "fused_configs": [[16, 1]] if dry else [[32, 1], [32, 2], [64, 2], [64, 4], [128, 4], [128, 8]],
                        "plain_loop_s": 0.05 if dry else 0.5, "repeats": 1 if dry else 2,
                        "max_episode_steps": 100 if dry else 0,
                        "recording_population": 64 if dry else 262144,
                        "gpu_free_bytes": facts.get("gpu_free_bytes")},
                       [] if cuda or dry else ["CUDA rows (no CUDA device); the plain loop only"]))
    tts_arms = [{"device": "cpu", "population": 256}, {"device": "cuda", "population": 256}]
    if not dry:
        tts_arms.append({"device": "cuda", "population": 4096})
    cap = 30 if dry else 65
    est = [0.3 if a["device"] == "cpu" else 3.0 for a in tts_arms if cuda or a["device"] == "cpu"]
    seeds, budget, exp = (1, 5.0, 3.0) if dry else fit_budget(est, 5, cap - MARGIN_S - 6, 0.8)
    parts.append(_part("es_time_to_threshold", "CartPole time-to-threshold: CUDA vs the numpy CPU path", cap, exp + 6,
                       {"env": "CartPole-v1", "arms": tts_arms, "seeds": seeds, "max_seconds": budget},
                       ([f"seeds 5 -> {seeds} to fit the cap"] if seeds < 5 else [])
                       + [f"runs stop at {budget:g} s (unsolved past it)"]))

    # 2. GA3C and the device DQN against hogwild
    workers = 2 if dry else max(1, min(14, cores - 2))
    arms = ["a3c:ga3c", "dqn:device", "a3c:hogwild", "dqn:hogwild"]
    cap = 45 if dry else 90
    est = [{"a3c:hogwild": 1.5, "a3c:ga3c": 4.0, "dqn:hogwild": 8.0, "dqn:device": 12.0}[a] for a in arms]
    seeds, budget, exp = (1, 2.0, 20.0) if dry else fit_budget(est, 3, cap - MARGIN_S - 5, 1.5)
    cuts = [f"{workers} actors, not 14 (this machine has {cores} cores)"] if not dry and workers < 14 else []
    parts.append(_part("rl_device", "GA3C and the device DQN (CUDA) vs hogwild A3C and DQN, CartPole", cap, exp + 5,
                       {"env": "CartPole-v1", "arms": arms, "workers": workers, "seeds": seeds, "max_seconds": budget},
                       cuts + ([f"seeds 3 -> {seeds} to fit the cap"] if seeds < 3 else [])
                       + [f"runs stop at {budget:g} s (unsolved past it)"]))

    # 3. real scaling on the cores
    for env in ("CartPole-v1", "Acrobot-v1"):
        name = "scaling_" + env.split("-")[0].lower()
        wanted = [1, 2, 4, 8, 14]
        ws = [1, 2] if dry else [w for w in wanted if w <= max(1, cores - 1)]
        cap, reserve = (45 if dry else 100), (10 if dry else 12)
        cuts = [f"workers {ws}, not {wanted} (this machine has {cores} cores)"] if not dry and ws != wanted else []
        if dry:
            seeds, budget, exp = 1, 1.0, 25.0
        else:
            est = [SOLVE_1W[env][a.split(":")[0]] / math.sqrt(w) for a in SCALING_ARMS for w in ws]
            seeds, budget, exp = fit_budget(est, 3, cap - MARGIN_S - reserve - 3, 1.0)
        cuts += ([f"seeds 3 -> {seeds} to fit the cap"] if seeds < 3 else [])
        cuts.append(f"runs stop at {budget:g} s: an arm slower than that (DQN at few workers) counts as unsolved, "
                    "its steps/s and bytes still measured")
        parts.append(_part(name, f"Scaling on real cores: esrl sweep + esrl report, {env}", cap, exp + reserve + 3,
                           {"env": env, "arms": SCALING_ARMS, "workers": ws, "seeds": seeds, "max_seconds": budget,
                            "report_reserve_s": reserve}, cuts))
    for p in parts:
        if dry and p["name"] != "preflight":
            p["cuts"] = ["dry run: tiny sizes on the CPU"]
        p["params"]["dry"] = dry
        p["params"]["deadline_s"] = p["cap_s"] - MARGIN_S
    return parts


def show_plan(parts: list[dict[str, Any]], label: str) -> str:
    lines = [f"{label}: {len(parts)} parts, expected {sum(p['expected_s'] for p in parts) / 60:.1f} min, caps "
             f"{sum(p['cap_s'] for p in parts) / 60:.1f} min in all (none above {PART_CAP_LIMIT_S} s)"]
    for p in parts:
        lines.append(f"  {p['name']:<22} expected {p['expected_s']:>5.0f} s   cap {p['cap_s']:>4.0f} s"
                     + (f"   cut: {'; '.join(p['cuts'])}" if p["cuts"] else ""))
    return "\n".join(lines)


# --- running the parts --------------------------------------------------------------------------

def run_part(argv: list[str], cap_s: float, log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one part in its own process group; SIGTERM at cap - GRACE_S, SIGKILL at the cap."""
    t0 = time.perf_counter()
    timed_out = False
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(0.5, cap_s - GRACE_S))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
            with contextlib.suppress(ProcessLookupError, PermissionError):  # its own processes go with it
                os.killpg(proc.pid, signal.SIGKILL)
    return {"rc": rc, "timed_out": timed_out, "elapsed_s": round(time.perf_counter() - t0, 2)}


def read_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by the kill at the cap
                pass
    return out


def section(part: dict[str, Any], ran: dict[str, Any] | None, lines: list[dict[str, Any]]) -> dict[str, Any]:
    """A part's section: its records, and its status from its own last word, the exit code and the cap."""
    marks = [x for x in lines if x.get("kind") == "section"]
    records = [x for x in lines if x.get("kind") != "section"]
    last = marks[-1] if marks else {}
    status, reason = last.get("status"), last.get("reason")
    if part.get("skip"):
        status, reason = "skipped", part["skip"]
    elif ran is None:
        status, reason = "skipped", "not run"
    elif ran["rc"] != 0 and not ran["timed_out"]:
        status, reason = "failed", f"exit code {ran['rc']}; see logs/{part['name']}.log"
    elif status is None:
        status = "measured" if any(r.get("status") == "measured" for r in records) else "failed"
        reason = None if status == "measured" else "stopped at its cap before measuring anything"
    return {"section": part["name"], "title": part["title"], "status": status, "reason": reason,
            "timed_out": bool(ran and ran["timed_out"]), "cap_s": part["cap_s"], "expected_s": part["expected_s"],
            "elapsed_s": ran["elapsed_s"] if ran else 0.0, "rc": ran["rc"] if ran else None,
            "cuts": part["cuts"] + [c for m in marks for c in m.get("cuts", [])],
            "notes": [n for m in marks for n in m.get("notes", [])], "params": part["params"], "records": records,
            "log": f"logs/{part['name']}.log"}


# --- the summary ----------------------------------------------------------------------------------

def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)) or x in ("inf", "-inf", "nan"):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:,.0f}"
    return str(x)


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(_f(c) for c in r) + " |" for r in rows]


def _runs_table(records: list[dict[str, Any]], key: str) -> list[str]:
    """Solved k/n, median time-to-threshold and steps/s per arm, from per-run records."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("kind") == "run":
            groups.setdefault(r[key], []).append(r)
    rows = []
    for arm, rs in groups.items():
        done = [r for r in rs if r.get("status") == "measured"]
        ttt = sorted(r["time_to_threshold_s"] if r.get("confirmed") else math.inf for r in done)
        med = ttt[len(ttt) // 2] if ttt else None
        sps = sorted(r.get("steps_per_s") or 0.0 for r in done)
        note = "; ".join(sorted({r.get("reason") or "" for r in rs if r.get("status") != "measured"} - {""}))
        rows.append([arm, rs[0].get("device", "-"), rs[0].get("workers", 1), f"{sum(bool(r.get('confirmed')) for r in done)}/{len(done)}",
                     med, sps[len(sps) // 2] if sps else None, note or "-"])
    return _table([key, "device", "workers", "confirmed/runs", "median time-to-threshold s", "median env steps/s",
                   "note"], rows)


def summary_md(sections: list[dict[str, Any]], facts: dict[str, Any], mode: str, wall_s: float,
               boot: dict[str, Any]) -> str:
    out = [f"# Device suite ({mode})", "",
           f"Machine: {facts.get('gpu_name') or 'no GPU'}; {facts.get('cores', '?')} usable cores; torch "
           f"{facts.get('torch', '?')} (CUDA {facts.get('torch_cuda') or '-'}); Python {facts.get('python', '?')}; "
           f"gymnasium {facts.get('gymnasium', '?')}; commit {facts.get('commit', '?')}. Wall time {wall_s:.0f} s. "
           f"Bootstrap: {boot.get('method') or 'nothing to install'}.", ""]
    out += _table(["part", "status", "elapsed s", "expected s", "cap s", "timed out", "reason / what was cut"],
                  [[s["section"], s["status"], s["elapsed_s"], s["expected_s"], s["cap_s"], "yes" if s["timed_out"] else "no",
                    "; ".join(([s["reason"]] if s["reason"] else []) + s["cuts"]) or "-"] for s in sections])
    for s in sections:
        recs = s["records"]
        out += ["", f"## {s['section']}: {s['title']}", ""]
        if s["reason"]:
            out.append(f"Status: {s['status']}: {s['reason']}.")
        out += [f"- {n}" for n in s["notes"]]
        if not recs:
            continue
        if s["section"] == "preflight":
            out += [f"- {k}: {v}" for r in recs if r.get("kind") == "facts" for k, v in r.items() if k != "kind"]
        elif s["section"] == "es_throughput":
            out += ["", "Plain Gymnasium loop (one env, random actions): " + ", ".join(
                f"{r['env']} {_f(r['steps_per_s'])} steps/s" for r in recs if r.get("kind") == "plain_gym"), ""]
            out += _table(["env", "engine", "device", "population", "obs recorded", "env steps/s", "kernel env steps/s", "kernel (block, warps)",
                           "x plain loop", "mean episode", "longest", "seconds", "status"],
                          [[r["env"], r.get("engine", "torch"), r.get("device"), r["population"],
                            r.get("obs_recorded_fraction"), r.get("steps_per_s"), r.get("kernel_steps_per_s"), r.get("kernel_best"),
                            r.get("ratio_vs_plain_gym"),
                            r.get("mean_episode_length"), r.get("longest_episode"), r.get("seconds"),
                            r["status"] + (" (CPU stand-in)" if r.get("stand_in") else "")
                            + (f": {r['reason']}" if r.get("reason") else "")]
                           for r in recs if r.get("kind") == "throughput"])
        elif s["section"] in ("es_time_to_threshold", "rl_device"):
            out += ["", *_runs_table(recs, "arm")]
        elif s["section"].startswith("scaling_"):
            for r in recs:
                if r.get("kind") == "sweep":
                    out += ["", f"Sweep: {r.get('runs_finished')} of {r.get('runs_planned')} runs finished; "
                            f"per-run budget {r.get('max_seconds')} s; report: `{r.get('report_md') or 'not written'}`."]
            rows = [[r["arm"], r["workers"], f"{r.get('confirmed')}/{r.get('finished')}", r.get("ttt_median"),
                     r.get("speedup"), r.get("efficiency"), r.get("model_s"), r.get("steps_per_s"),
                     r.get("bytes_per_env_step")] for r in recs if r.get("kind") == "scaling_row"]
            out += ["", *_table(["arm", "workers", "confirmed/finished", "median time-to-threshold s", "speedup",
                                 "efficiency", "model s (this machine)", "env steps/s", "bytes/env step"], rows)]
    return "\n".join(out) + "\n"


def archive(out: Path, dest: Path) -> None:
    """out/ as one .tar.gz without the weights (*.safetensors): what comes back from the device machine."""
    def keep(ti: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if ti.name.endswith(".safetensors") else ti

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(out, arcname=out.name, filter=keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for the results (created; must not hold an earlier suite's results)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, CUDA rows skipped with the reason")
    ap.add_argument("--only", help="comma-separated parts to run (the others are recorded as skipped)")
    ap.add_argument("--wheels", default=str(BUNDLE_DIR), help="folder of wheels installed where Gymnasium is missing")
    ap.add_argument("--archive", help="also write the results, without weights, to this .tar.gz (and summary.md "
                    "beside it)")
    ap.add_argument("--bundle", metavar="DIR", help="download the device machine's wheels into DIR and stop")
    args = ap.parse_args()
    if args.bundle:
        doc = make_bundle(Path(args.bundle))
        print(f"device bundle: {len(doc['wheels'])} wheels, {doc['total_bytes'] / 2**20:.2f} MiB in {args.bundle}: "
              + ", ".join(doc["wheels"]))
        return
    if not args.out:
        ap.error("--out is required")
    t0 = time.perf_counter()
    out = Path(args.out)
    if (out / "plan.json").exists():
        raise SystemExit(f"device_suite: {out} holds an earlier suite's results; choose another --out")
    for sub in ("sections", "logs", "parts"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    mode = "dry run, CPU" if args.dry_run else "full"
    print(f"device suite ({mode}) -> {out}", flush=True)
    print(show_plan(plan(False, DEVICE_FACTS), "full run on the device machine (16 cores, CUDA), as planned"), flush=True)
    boot, env = bootstrap(Path(args.wheels))
    print(f"bootstrap: {boot['method'] or 'Gymnasium present, nothing installed'}", flush=True)

    def launch(p: dict[str, Any]) -> dict[str, Any]:
        print(f"part {p['name']}: starting (expected {p['expected_s']:.0f} s, cap {p['cap_s']:.0f} s)", flush=True)
        argv = [sys.executable, str(PARTS_SCRIPT), p["name"], str(out.resolve())]
        ran = run_part(argv, p["cap_s"], out / "logs" / f"{p['name']}.log", env)
        print(f"part {p['name']}: {'timed out' if ran['timed_out'] else 'exit ' + str(ran['rc'])} "
              f"after {ran['elapsed_s']:.1f} s", flush=True)
        return ran

    first = plan(args.dry_run, {})[0]
    (out / "plan.json").write_text(json.dumps({"mode": mode, "parts": [first]}, indent=2) + "\n")
    facts: dict[str, Any] = {}
    sections: list[dict[str, Any]] = []
    try:
        ran = launch(first)
        facts = next((r for r in read_lines(out / "parts" / "preflight.jsonl") if r.get("kind") == "facts"), {})
        sections.append(section(first, ran, read_lines(out / "parts" / "preflight.jsonl")))
        parts = plan(args.dry_run, facts)
        (out / "plan.json").write_text(json.dumps({"mode": mode, "facts": facts, "parts": parts}, indent=2) + "\n")
        print(show_plan(parts, f"this run ({mode})"), flush=True)
        only = set(args.only.split(",")) if args.only else None
        for p in parts[1:]:
            ran = None
            if only and p["name"] not in only:
                p["skip"] = "not asked for (--only)"
            elif time.perf_counter() - t0 + p["cap_s"] > TOTAL_LIMIT_S - 10:  # the suite's own 8 minutes
                p["skip"] = f"the suite's {TOTAL_LIMIT_S / 60:.0f} minutes would not hold its cap"
            else:
                ran = launch(p)
            sections.append(section(p, ran, read_lines(out / "parts" / f"{p['name']}.jsonl")))
    finally:  # whatever happened, what was measured is written
        with open(out / "results.jsonl", "w") as fh:
            for sec in sections:
                for r in sec["records"]:
                    fh.write(json.dumps({"section": sec["section"], **r}) + "\n")
                fh.write(json.dumps({"section": sec["section"], "kind": "section",
                                     **{k: v for k, v in sec.items() if k not in ("records", "section")}}) + "\n")
        for sec in sections:
            (out / "sections" / f"{sec['section']}.json").write_text(json.dumps(sec, indent=2) + "\n")
        wall = time.perf_counter() - t0
        md = summary_md(sections, facts, mode, wall, boot)
        (out / "summary.md").write_text(md)
        if boot.get("site"):
            shutil.rmtree(boot["site"], ignore_errors=True)
        if args.archive:
            archive(out, Path(args.archive))
            shutil.copy(out / "summary.md", Path(args.archive).parent / "summary.md")
    print(md, flush=True)
    print(f"device suite: done in {wall:.0f} s; {out / 'summary.md'}", flush=True)

if __name__ == "__main__":
    main()
