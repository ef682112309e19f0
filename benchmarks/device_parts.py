"""The parts of benchmarks/device_suite.py, one per process: `device_parts.py PART OUT_DIR`.

A part reads its settings from OUT_DIR/plan.json and appends one JSON object a line to
OUT_DIR/parts/PART.jsonl as it measures, so a part stopped at its cap keeps what it measured;
`{"kind": "section", ...}` lines give its status, why it skipped what it skipped and what it
cut. It stops starting work `deadline_s` after it began. Ray, MuJoCo, ALE and SimPy are refused
on import here as they are absent on the device machine, so a dry run here catches a path that
would need them there. `device_parts.py cli OUT_DIR ARGS...` runs the `esrl` command the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.abc
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BLOCKED = ("ray", "mujoco", "ale_py", "simpy")
NO_CUDA = "no CUDA device (torch.cuda.is_available() is False)"
REPO = Path(__file__).resolve().parent.parent


class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (absent on the device machine)", name=name)


def block_absent_modules() -> None:
    sys.meta_path.insert(0, _Refuse())


class Part:
    """A part's settings, clock and output."""

    def __init__(self, name: str, out: Path) -> None:
        self.name, self.out, self.t0 = name, out, time.perf_counter()
        parts = json.loads((out / "plan.json").read_text())["parts"]
        self.p: dict[str, Any] = next(p for p in parts if p["name"] == name)["params"]
        self.dry = bool(self.p.get("dry"))
        self.path = out / "parts" / f"{name}.jsonl"

    def left(self) -> float:
        return self.p["deadline_s"] - (time.perf_counter() - self.t0)

    def emit(self, **rec: Any) -> None:
        line = json.dumps(rec, default=_jsonable)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")
        print(line, flush=True)

    def section(self, status: str, reason: str | None = None, cuts: list[str] | None = None,
                notes: list[str] | None = None) -> None:
        self.emit(kind="section", status=status, reason=reason, cuts=cuts or [], notes=notes or [])


def _jsonable(x: Any) -> Any:
    try:
        return float(x) if not hasattr(x, "tolist") else x.tolist()
    except (TypeError, ValueError):
        return str(x)


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# --- preflight ------------------------------------------------------------------------------------

def _meminfo(key: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def _commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        with contextlib.suppress(OSError, ValueError, KeyError):
            return json.loads((REPO / ".device-bundle" / "bundle.json").read_text())["commit"] + " (at bundle time)"
        return "unknown"


def preflight(part: Part) -> None:
    import numpy as np
    import torch

    facts: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                             "torch_cuda": torch.version.cuda, "numpy": np.__version__, "commit": _commit(),
                             "cores": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
                             "ram_available_bytes": _meminfo("MemAvailable"), "ram_total_bytes": _meminfo("MemTotal"),
                             "disk_free_bytes": shutil.disk_usage(part.out).free, "cuda": torch.cuda.is_available()}
    if facts["cuda"]:
        free, total = torch.cuda.mem_get_info(0)
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu_name=torch.cuda.get_device_name(0), gpu_total_bytes=total, gpu_free_bytes=free,
                     gpu_capability=f"{props.major}.{props.minor}", gpu_count=torch.cuda.device_count())
        facts["cuda_works"] = float(torch.ones(8, device="cuda").sum().item()) == 8.0  # a broken driver fails here
    problems = []
    try:
        import gymnasium

        facts["gymnasium"] = gymnasium.__version__
        for mod in ("esrl.train", "esrl.train_rl", "esrl.es.vectorized", "esrl.rl.ga3c", "esrl.rl.device_dqn",
                    "esrl.experiments.sweep", "esrl.experiments.report", "esrl.cli"):
            importlib.import_module(mod)
    except ImportError as exc:
        problems.append(f"import failed: {exc}")
    facts["refused_imports"] = list(BLOCKED)
    part.emit(kind="facts", status="measured", **facts)
    notes = [] if facts["cuda"] else [f"{NO_CUDA}: the CUDA rows of every part are skipped"]
    if facts["cores"] < 15:
        notes.append(f"{facts['cores']} usable cores: the scaling and actor counts are cut to fit them")
    if problems:
        part.section("failed", "; ".join(problems))
    else:
        part.section("measured", notes=notes)


# --- 1. vectorized ES -------------------------------------------------------------------------------

def plain_loop(env_id: str, seconds: float) -> float:
    """Env steps/s of one Gymnasium env stepped with random actions (the baseline of benchmarks/vectorized.py)."""
    import gymnasium as gym

    env = gym.make(env_id)
    env.reset(seed=0)
    env.action_space.seed(0)
    steps, t0 = 0, time.perf_counter()
    while True:
        for _ in range(500):
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            if term or trunc:
                env.reset()
        steps += 500
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return steps / dt


def es_throughput(part: Part) -> None:
    """Iteration 0 of ES as one batch per (env, engine, population), best of a few after a warm-up.

    Engines: `torch` (the batched torch path: per-member weights materialised, a few dozen kernels
    and a host sync per step) on every env; `fused` (esrl.es.fused: one Triton kernel per chunk,
    weights read from the noise table in place) on CartPole, also timed without the host's share
    (offsets, initial states, the copies back) and at a few block sizes and warp counts.
    """
    import numpy as np
    import torch

    from esrl import envs
    from esrl.config import ESConfig
    from esrl.es import fused
    from esrl.es.vectorized import MAX_BATCH_FLOATS, ESTorchSetup

    p, cuda = part.p, _cuda()
    device = "cuda" if cuda else ("cpu" if part.dry else None)
    reason = None if cuda else NO_CUDA + ("; the same torch path ran on the CPU at tiny populations (dry run), the "
                                          "fused kernel in Triton's interpreter" if part.dry else "")
    base = {e: plain_loop(e, p["plain_loop_s"]) for e in p["envs"]}
    for e, sps in base.items():
        part.emit(kind="plain_gym", status="measured", env=e, device="cpu", steps_per_s=sps)
    if device is None:
        part.section("skipped", reason)
        return
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    free = torch.cuda.mem_get_info(0)[0] if cuda else None
    cuts = []

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def best_of(fn: Any) -> float:
        best = math.inf
        for _ in range(p["repeats"]):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - t0)
        return best

    def measure(env_id: str, spec: Any, cfg: Any, engine: str) -> tuple[dict[str, Any], float]:
        """Iteration 0 as one batch: a warm-up run, then the best of `repeats`; (record, seconds spent)."""
        t_start = time.perf_counter()
        pop = cfg.population
        rep = ESTorchSetup(cfg, spec, 0, device=device, engine=engine).build()
        # fused: initial states, offsets and outputs per member; torch: a chunk's params, index and copies
        batch = pop * 64 if engine == "fused" else min(pop, MAX_BATCH_FLOATS // rep.dim) * rep.dim * 28
        need = batch + rep.table_size * 4
        if free is not None and need > 0.8 * free:
            return {"status": "skipped", "engine": engine, "reason": f"needs about {need / 2**30:.1f} GiB of GPU "
                    f"memory, {free / 2**30:.1f} GiB free"}, 0.0
        sync()
        out = rep.run(("pop", 0, 0, pop))  # warm-up: kernels loaded (compiled), the table on the device

        def again(r: Any = rep) -> None:
            r._cache_t = -1  # evaluate iteration 0 again
            r.run(("pop", 0, 0, pop))

        best = best_of(again)
        steps = int(out["lengths"].sum())
        rec = {"status": "measured", "engine": engine, "device": device, "device_name": name, "stand_in": not cuda,
               "num_params": rep.dim, "steps": steps, "seconds": best, "steps_per_s": steps / best,
               "ratio_vs_plain_gym": steps / best / base[env_id], "mean_episode_length": steps / pop,
               "longest_episode": int(out["lengths"].max()), "param_bytes": rep.peak_bytes,
               "members_per_chunk": min(pop, MAX_BATCH_FLOATS // rep.dim),
               "obs_recorded_fraction": cfg.obs_norm_fraction if cfg.obs_norm else 0.0}
        if engine == "fused":  # the kernel alone, on the first chunk's inputs, at a few blocks and warp counts
            m = np.arange(min(pop, MAX_BATCH_FLOATS // rep.dim))
            kw = rep.fused_inputs(m, 0, 0, int(rep.step_cap))
            for block, warps in p["fused_configs"]:
                res = fused.cartpole_episodes(**kw, block=block, num_warps=warps)  # compiled here, not timed
                k_steps = int(res["lengths"].sum())
                t = best_of(lambda b=block, w=warps: fused.cartpole_episodes(**kw, block=b, num_warps=w))
                rec[f"kernel_b{block}_w{warps}_steps_per_s"] = k_steps / t
            best = max((v, k) for k, v in rec.items() if k.startswith("kernel_b"))
            rec["kernel_steps_per_s"], rec["kernel_best"] = best[0], best[1][len("kernel_"):-len("_steps_per_s")]
            rec["kernel_members"] = len(m)
            del kw
        del rep, out
        if cuda:
            torch.cuda.empty_cache()
        return rec, time.perf_counter() - t_start

    for env_id in p["envs"]:
        spec = envs.spec_of(env_id)
        if p.get("max_episode_steps"):  # dry run: shorter episodes, the same code
            spec = dataclasses.replace(spec, max_episode_steps=min(spec.max_episode_steps, p["max_episode_steps"]))
        engines = ["torch"]
        why_not = fused.supports(env_id, [(spec.obs_dim, 16), (16, spec.act_dim)], 0.0)
        if why_not is None:
            engines.insert(0, "fused")
        for engine in engines:
            last_s = 0.0  # seconds of the previous population's measurement: the next one is about 4x
            pops = p["fused_populations"] if engine == "fused" else p["populations"]
            for pop in pops:
                if last_s * 4 > part.left():
                    cuts.append(f"{env_id} {engine} from population {pop}: the cap was near")
                    part.emit(kind="throughput", status="skipped", env=env_id, engine=engine, population=pop,
                              reason="the cap was near")
                    break
                # observation recording off: the torch path's per-member copies to the host would be timed
                rec, last_s = measure(env_id, spec, ESConfig(population=pop, obs_norm_fraction=0.0), engine)
                part.emit(kind="throughput", env=env_id, population=pop, **rec)
            pop = p["recording_population"]
            if env_id == p["envs"][0] and pop and part.left() > 4 * last_s:  # the default: 5% of members recorded
                rec, _ = measure(env_id, spec, ESConfig(population=pop), engine)
                part.emit(kind="throughput", env=env_id, population=pop, **rec)
    notes = ["iteration 0 of ES (random initial policies) with per-member weights; CartPole episodes are short "
             "(mean ~20 steps), Acrobot's and Pendulum's fill the batch (500 and 200 steps)",
             "observation recording off (obs_norm_fraction 0) except the rows marked 0.05, the default",
             "fused: one Triton kernel per chunk, float32 dynamics (the torch engine's are float64); `kernel steps/s` "
             "times the kernel alone on one chunk, the best of its (block, warps) configurations; `env steps/s` times the whole iteration"]
    part.section("measured" if cuda else "skipped", reason, cuts, notes)


def _run_record(summary: dict[str, Any]) -> dict[str, Any]:
    training = float(summary.get("training_s") or 0.0)
    steps = int(summary.get("env_steps") or 0)
    rec = {k: summary.get(k) for k in ("solved", "confirmed", "confirmed_return", "time_to_threshold_s",
                                        "env_steps_to_threshold", "env_steps", "training_s", "wall_s", "eval_s",
                                        "iterations", "updates", "stop_reason", "bytes_per_env_step", "transport",
                                        "best_eval_return", "num_params")}
    rec["steps_per_s"] = steps / training if training > 0 else None
    if summary.get("updates") is not None and training > 0:
        rec["updates_per_s"] = summary["updates"] / training
    return rec


def es_time_to_threshold(part: Part) -> None:
    """ES on the vectorized backend, CUDA against the numpy CPU path, seeds interleaved (drift hits both)."""
    from esrl.config import ESConfig, RunConfig
    from esrl.es.vectorized import ESTorchSetup
    from esrl.train import train

    p, cuda = part.p, _cuda()
    if cuda:  # the CUDA context and kernels are loaded before the clocks start, as in a long-running process
        from esrl import envs

        ESTorchSetup(ESConfig(population=256), envs.spec_of(p["env"]), 0, device="cuda").build().run(("pop", 0, 0, 256))
    cuts: list[str] = []
    for seed in range(p["seeds"]):
        for arm in p["arms"]:
            label = f"{arm['device']}-{arm['population']}"
            head = {"kind": "run", "arm": label, "device": arm["device"], "population": arm["population"],
                    "seed": seed, "env": p["env"]}
            if arm["device"] == "cuda" and not cuda:
                part.emit(**head, status="skipped", reason=NO_CUDA)
                continue
            if part.left() < p["max_seconds"] + 3:
                cuts.append(f"{label} seed {seed} and later: the cap was near")
                part.emit(**head, status="skipped", reason="the cap was near")
                continue
            run = RunConfig(env=p["env"], seed=seed, backend="vectorized", device=arm["device"], workers=1,
                            max_seconds=p["max_seconds"], run_dir=str(part.out / "runs" / part.name / f"{label}-s{seed}"))
            try:
                s = train(run, ESConfig(population=arm["population"]), show_progress=False)
                part.emit(**head, status="measured", **_run_record(s))
            except Exception as exc:  # one failed run is recorded; the part goes on
                part.emit(**head, status="failed", reason=f"{type(exc).__name__}: {exc}")
    part.section("measured" if cuda else "skipped", None if cuda else NO_CUDA + ": the numpy CPU rows only", cuts)


# --- 2. GA3C and the device DQN ------------------------------------------------------------------

def rl_device(part: Part) -> None:
    """The device arrangements (model, optimizer, learner on CUDA; CPU actors) against hogwild, same actors."""
    from esrl.config import ALGORITHMS, RunConfig
    from esrl.train_rl import train_rl

    p, cuda = part.p, _cuda()
    cuts: list[str] = []
    for seed in range(p["seeds"]):
        for arm in p["arms"]:
            algo, sync = arm.split(":")
            on_device = sync in ("ga3c", "device")
            device = "cuda" if on_device and (cuda or not part.dry) else "cpu"  # dry run: the CPU stands in
            head = {"kind": "run", "arm": arm, "device": device, "workers": p["workers"], "seed": seed, "env": p["env"],
                    "stand_in": on_device and not cuda}
            if on_device and not cuda and not part.dry:
                part.emit(**head, status="skipped", reason=NO_CUDA)
                continue
            if part.left() < p["max_seconds"] + 4:
                cuts.append(f"{arm} seed {seed} and later: the cap was near")
                part.emit(**head, status="skipped", reason="the cap was near")
                continue
            run = RunConfig(env=p["env"], seed=seed, backend="processes", device=device, workers=p["workers"],
                            max_seconds=p["max_seconds"],
                            run_dir=str(part.out / "runs" / part.name / f"{arm.replace(':', '-')}-s{seed}"))
            try:
                s = train_rl(algo, run, ALGORITHMS[algo](sync=sync), show_progress=False)
                part.emit(**head, status="measured", **_run_record(s))
            except Exception as exc:
                part.emit(**head, status="failed", reason=f"{type(exc).__name__}: {exc}")
    reason = None if cuda else NO_CUDA + ("; GA3C and the device DQN ran on the CPU as stand-ins (dry run)"
                                          if part.dry else "; the hogwild rows only")
    part.section("measured" if cuda else "skipped", reason, cuts)


# --- 3. scaling on real cores --------------------------------------------------------------------

def _stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM (the sweep stops like Ctrl-C: the run in hand is marked interrupted), then SIGKILL."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def scaling(part: Part) -> None:
    """`esrl sweep` over arms x workers x seeds (seeds outermost: a cut keeps whole seeds), then `esrl report`."""
    from esrl.experiments.sweep import finished, run_name

    p = part.p
    out = part.out / "sweeps" / p["env"]
    cli = [sys.executable, str(Path(__file__).resolve()), "cli", str(part.out)]
    sweep = [*cli, "sweep", "--algos", ",".join(p["arms"]), "--env", p["env"], "--workers",
             ",".join(map(str, p["workers"])), "--seeds", str(p["seeds"]), "--max-seconds", str(p["max_seconds"]),
             "--out", str(out)]
    print("sweep:", " ".join(sweep[4:]), flush=True)
    proc = subprocess.Popen(sweep)
    cuts = []
    try:
        proc.wait(timeout=max(1.0, part.left() - p["report_reserve_s"]))
    except subprocess.TimeoutExpired:
        _stop(proc)
    grid = [(a, w, s) for s in range(p["seeds"]) for a in p["arms"] for w in p["workers"]]
    done = [g for g in grid if finished(out / run_name(*g))]
    if len(done) < len(grid):
        cuts.append(f"the sweep was stopped after {len(done)} of {len(grid)} runs to leave time for the report "
                    "(seeds run outermost: the missing runs are the last seeds')")
    rep = subprocess.run([*cli, "report", str(out)], timeout=max(1.0, part.left() + 1), check=False)
    doc: dict[str, Any] = {}
    with contextlib.suppress(OSError, json.JSONDecodeError):
        doc = json.loads((out / "report.json").read_text())
    part.emit(kind="sweep", status="measured" if done else "failed", env=p["env"], runs_planned=len(grid),
              runs_finished=len(done), max_seconds=p["max_seconds"], seeds=p["seeds"], workers=p["workers"],
              missing=[run_name(*g) for g in grid if g not in done], report_rc=rep.returncode,
              report_md=str((out / "report.md").relative_to(part.out)) if (out / "report.md").exists() else None,
              verdict=doc.get("verdict"))
    model = doc.get("model") or {}
    for row in doc.get("rows", []):
        res = {r["workers"]: r["model_s"] for r in (model.get(row["arm"]) or {}).get("residuals", [])}
        part.emit(kind="scaling_row", status="measured" if row.get("finished") else "skipped", env=p["env"],
                  model_s=res.get(row["workers"]),
                  **{k: row.get(k) for k in ("arm", "workers", "runs", "finished", "confirmed", "ttt_median", "ttt_lo",
                                             "ttt_hi", "speedup", "speedup_lo", "speedup_hi", "efficiency",
                                             "steps_per_s", "bytes_per_env_step", "transport")})
    if not done:
        part.section("failed", "no run of the sweep finished", cuts)
    else:
        part.section("measured", None, cuts)


PARTS = {"preflight": preflight, "es_throughput": es_throughput, "es_time_to_threshold": es_time_to_threshold,
         "rl_device": rl_device, "scaling_cartpole": scaling, "scaling_acrobot": scaling}


def main() -> None:
    block_absent_modules()
    name, out = sys.argv[1], Path(sys.argv[2])
    if name == "cli":  # the esrl command, with the same imports refused
        from esrl.cli import main as esrl_main

        sys.exit(esrl_main(sys.argv[3:]))
    part = Part(name, out)
    if part.dry and not _cuda():  # Triton kernels in its interpreter, chosen before triton is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # at the cap: exit, running cleanups
    PARTS[name](part)


if __name__ == "__main__":
    main()
