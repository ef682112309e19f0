"""ES learning curve on HalfCheetah-v5 over a fixed wall-clock budget (configs/halfcheetah-es.toml).

Trains with the preset (2 workers, 20 minutes by default), then prints one JSON line per
evaluation (wall time, env steps, evaluation return) and a summary line with the best and
final evaluation returns against the issue's figure (>= 1500), and saves the curve as a PNG.
Run:
    .venv/bin/python benchmarks/halfcheetah_curve.py [--minutes 20] [--workers 2] [--png docs/figures/halfcheetah_es.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from esrl.config import ESConfig, RunConfig, build, load_file, split_settings
from esrl.train import train

PRESET = Path(__file__).resolve().parents[1] / "configs" / "halfcheetah-es.toml"


def emit(**record: object) -> None:
    print(json.dumps(record), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default="runs/bench-halfcheetah-es")
    parser.add_argument("--png", default="", help="write the curve to this PNG")
    args = parser.parse_args()
    run_vals, es_vals = split_settings(load_file(PRESET), ESConfig)
    run_vals.update(max_seconds=args.minutes * 60, workers=args.workers, seed=args.seed, run_dir=args.run_dir)
    run, cfg = build(RunConfig, run_vals), build(ESConfig, es_vals)
    summary = train(run, cfg, overwrite=True, show_progress=False)
    lines = [json.loads(x) for x in (Path(args.run_dir) / "metrics.jsonl").read_text().splitlines()]
    curve = [(m["wall_s"], m["env_steps"], m["eval_return"]) for m in lines if m.get("eval_return") is not None]
    for wall, steps, ret in curve:
        emit(bench="halfcheetah_curve", wall_s=wall, env_steps=steps, eval_return=ret)
    emit(bench="halfcheetah_curve_summary", minutes=args.minutes, workers=args.workers, seed=args.seed,
         iterations=summary["iterations"], env_steps=summary["env_steps"], best_eval_return=summary["best_eval_return"],
         final_eval_return=curve[-1][2] if curve else None, target=1500.0,
         reached=bool(summary["best_eval_return"] is not None and summary["best_eval_return"] >= 1500.0))
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([c[0] / 60 for c in curve], [c[2] for c in curve], marker=".")
        ax.axhline(1500, color="grey", linestyle="--", label="target 1500")
        ax.set_xlabel("wall time (minutes)")
        ax.set_ylabel("evaluation return")
        ax.set_title(f"OpenAI-ES, HalfCheetah-v5, {args.workers} workers")
        ax.legend()
        fig.tight_layout()
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=120)


if __name__ == "__main__":
    main()
