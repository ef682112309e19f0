"""The `esrl` command: train, evaluate (sweep and report come with the scaling study)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from typing import Any

from esrl import config
from esrl.errors import InputError

RUN_ONLY_OVERRIDES = ("backend", "workers", "max_seconds", "max_iterations", "max_env_steps", "checkpoint_every",
                      "verify_every", "eval_every", "stop_on_solve")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="esrl", description="Evolution Strategies vs parallel RL, measured.")
    sub = p.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train an agent", description="Train an agent; every setting below can "
                        "also come from --config FILE (TOML or YAML, flat keys named like the options).")
    tr.add_argument("algo", nargs="?", choices=sorted(config.ALGORITHMS), help="algorithm")
    tr.add_argument("--config", help="TOML/YAML/JSON file of settings; command-line options override it")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    tr.add_argument("--quiet", action="store_true", help="no progress display")
    config.add_arguments(tr, config.RunConfig)
    config.add_arguments(tr, config.ESConfig)

    ev = sub.add_parser("evaluate", help="evaluate a run's latest checkpoint")
    ev.add_argument("run_dir", help="run directory")
    ev.add_argument("--episodes", type=int, default=10, help="episodes to run [default: 10]")
    ev.add_argument("--seed", type=int, default=None, help="evaluation seed [default: the run's seed]")
    ev.add_argument("--video", metavar="PATH", help="also record the episodes to this .mp4 or .gif")
    return p


def _train(args: argparse.Namespace, given: dict[str, Any]) -> int:
    from esrl import train

    if args.resume:
        run, es_cfg = train.load_run(args.resume)
        for key in given:
            if key not in RUN_ONLY_OVERRIDES:
                raise InputError(key, "cannot change on --resume", ", ".join(RUN_ONLY_OVERRIDES))
        run = dataclasses.replace(run, **given, run_dir=args.resume)
        summary = train.train(run, es_cfg, resume=True, show_progress=not args.quiet)
    else:
        if args.algo is None:
            raise InputError("algo", "missing", ", ".join(sorted(config.ALGORITHMS)))
        algo_cls = config.ALGORITHMS[args.algo]
        values = config.load_file(args.config) if args.config else {}
        values.update(given)
        run_vals, algo_vals = config.split_settings(values, algo_cls)
        run = config.build(config.RunConfig, run_vals)
        es_cfg = config.build(algo_cls, algo_vals)
        summary = train.train(run, es_cfg, overwrite=args.overwrite, show_progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from esrl.evaluate import evaluate

    if args.episodes < 1:
        raise InputError("episodes", f"must be >= 1, got {args.episodes}")
    out = evaluate(args.run_dir, args.episodes, args.seed, args.video)
    print(json.dumps(out, indent=2))
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops like Ctrl-C: the last iteration is checkpointed


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = _parser().parse_args(argv)
    fields = {f.name for cls in (config.RunConfig, config.ESConfig) for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in fields}
    try:
        if args.command == "train":
            return _train(args, given)
        return _evaluate(args)
    except InputError as exc:
        print(f"esrl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("esrl: interrupted; the run directory holds a checkpoint to --resume from", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
