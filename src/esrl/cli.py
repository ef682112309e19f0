"""The `esrl` command: train, resume, evaluate, export, tune (sweep and report come with the scaling study)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import signal
import sys
from typing import Any, NoReturn

from esrl import config, zoo
from esrl.errors import InputError
from esrl.tune import TuneSpec  # its settings are the options of `esrl tune`; optuna is imported by a tune only

# settings a resumed run may change: budgets and where it runs, never the algorithm's maths
RUN_ONLY_OVERRIDES = ("backend", "workers", "max_seconds", "max_iterations", "max_env_steps", "checkpoint_every",
                      "verify_every", "eval_every_steps", "confirm_episodes", "stop_on_solve", "tensorboard")


TUNE_DESCRIPTION = (
    "Search ALGO's settings on --env with Optuna (TPE, median pruning), each trial an ordinary run in "
    "OUT/trials/NNNN over the env's zoo preset. Score, maximized: a confirmed solve scores "
    "1 + (1 - time_to_threshold / budget); any other run its progress (best evaluation - evaluation 0) / "
    "(target - evaluation 0), clipped to [-1, 1]. The study is kept in SQLite under OUT: the same command "
    "continues it. OUT/best.toml is the best trial as a preset for configs/zoo/ALGO/ENV.toml.")


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but usage errors are one line naming the field, like every other input error."""

    def error(self, message: str) -> NoReturn:
        m = re.match(r"argument (?:--)?([\w-]+)(?:/[^:]*)?: (.*)", message)
        if m:
            message = f"{m.group(1).replace('-', '_')}: {m.group(2)}"
        elif message.startswith("unrecognized arguments:"):
            first = message.split(":", 1)[1].split()[0]
            hint = getattr(self, "unknown_hint", "see --help")
            message = f"{first.lstrip('-').split('=')[0].replace('-', '_')}: not accepted here ({hint})"
        elif "required: ALGO" in message:
            message = f"algo: missing (accepted: {', '.join(config.ALGORITHMS)})"
        self.exit(2, f"esrl: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="esrl", description="Evolution Strategies vs parallel RL, measured.")
    sub = p.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train an agent",
                        description="Train an agent. `esrl train ALGO --help` lists that algorithm's settings.")
    algos = tr.add_subparsers(dest="algo", metavar="ALGO", required=True)
    for name, cls in config.ALGORITHMS.items():
        ap = algos.add_parser(name, help=(cls.__doc__ or "").strip().splitlines()[0],
                              description=(cls.__doc__ or "").strip() + " Every setting can also come from "
                              "--config FILE (TOML or YAML, flat keys named like the options).")
        ap.add_argument("--config", help="TOML/YAML/JSON file of settings; command-line options override it")
        ap.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
        ap.add_argument("--quiet", action="store_true", help="no progress display")
        config.add_arguments(ap, config.RunConfig)
        config.add_arguments(ap, cls)

    rs = sub.add_parser("resume", help="continue a run from its last checkpoint (also: esrl train --resume DIR)")
    rs.add_argument("run_dir", help="run directory")
    rs.add_argument("--quiet", action="store_true", help="no progress display")
    _add_overrides(rs)

    sw = sub.add_parser("sweep", help="run arms (algo[:sync]) x workers x seeds; a restarted sweep skips finished runs")
    sw.add_argument("--algos", help="comma-separated arms, algo[:sync]: es, a3c, dqn:lock, dqn:hogwild, "
                    "a3c:param-server, ... (ES takes no sync) [default: es,a3c]")
    sw.add_argument("--env", help="Gymnasium id [default: CartPole-v1]")
    sw.add_argument("--workers", help="comma-separated worker counts [default: 1,2]")
    sw.add_argument("--seeds", type=int, help="seeds 0..N-1 per combination; 5 or more give 95%% CIs [default: 3]")
    sw.add_argument("--backend", choices=["serial", "processes", "ray", "vectorized", "simulated"],
                    help="[default: processes] (vectorized: ES only; ray: RL arms need param-server; simulated: "
                    "N logical workers on a virtual clock, the options below)")
    sw.add_argument("--address", help="ray: cluster to join ('auto' or host:port) [default: a local instance]")
    sw.add_argument("--device", choices=["cpu", "cuda", "auto"],
                    help="vectorized backend and the RL device arrangements [default: auto]")
    sw.add_argument("--target-return", type=float, help="[default: the env's reward_threshold]")
    sw.add_argument("--max-seconds", type=float, help="budget per run [default: 60]")
    sw.add_argument("--preset", choices=["auto", "none"], help="auto: each arm's zoo preset for the env "
                    "(configs/zoo/), beneath --config's settings; none: the defaults [default: auto]")
    sw.add_argument("--population-per-worker", type=int, help="ES arms: population max(the arm's, this x workers), "
                    "as in the ES paper, where every worker evaluates its own perturbations [default: 0, fixed]")
    sw.add_argument("--config", help="YAML/TOML file: the options above plus `settings: {algo or arm: {key: value}}`")
    _add_sim_options(sw)
    sw.add_argument("--out", required=True, help="sweep directory")
    sw.add_argument("--quiet", action="store_true", help="no progress lines")

    tu = sub.add_parser("tune", help="search an algorithm's settings on an env with Optuna; OUT/best.toml is a "
                        "preset for configs/zoo/", description=TUNE_DESCRIPTION)
    tu.add_argument("algo", metavar="ALGO", help=f"algorithm: {', '.join(config.ALGORITHMS)}")
    tu.add_argument("--quiet", action="store_true", help="no line per trial")
    config.add_arguments(tu, TuneSpec)

    rp = sub.add_parser("report", help="write report.md (verdict first), report.html, report.json and plots")
    rp.add_argument("sweep_dir", help="sweep directory")
    rp.add_argument("--bandwidth-gbit", type=float, default=1.0, help="scaling model: hub bandwidth [default: 1]")
    rp.add_argument("--latency-us", type=float, default=100.0, help="scaling model: latency per message [default: 100]")
    rp.add_argument("--beside", action="append", default=[], metavar="OTHER_SWEEP_DIR",
                    help="set another sweep of the same env and target beside this one (e.g. simulated beside "
                    "measured): a section, plots/beside.png and report.json's `beside`; repeatable")

    checkpoint_help = ("latest, best (highest evaluation mean), threshold (first to reach the target) or N (the "
                       "checkpoint numbered N: ES iteration, RL global updates) [default: latest]")
    ev = sub.add_parser("evaluate", help="evaluate a run's checkpoint (latest by default)")
    ev.add_argument("run_dir", help="run directory")
    ev.add_argument("--episodes", type=int, default=10, help="episodes to run [default: 10]")
    ev.add_argument("--seed", type=int, default=None, help="evaluation seed [default: the run's seed]")
    ev.add_argument("--video", metavar="PATH", help="also record the episodes to this .mp4 or .gif")
    ev.add_argument("--checkpoint", default="latest", help=checkpoint_help)

    ex = sub.add_parser("export", help="write a run's policy as a file that runs with torch alone (torch.jit.load)")
    ex.add_argument("run_dir", help="run directory")
    ex.add_argument("--format", default="torchscript", help="file format: torchscript [default: torchscript]")
    ex.add_argument("--checkpoint", default="latest", help=checkpoint_help)
    ex.add_argument("--out", metavar="FILE", help="output .pt file [default: RUN/policy-CHECKPOINT.pt]")
    return p


def _add_sim_options(parser: argparse.ArgumentParser) -> None:
    """The simulated backend's RunConfig options, for a sweep (dest sim_NAME, collected into SweepSpec.sim)."""
    probe = _OneLineParser(add_help=False)
    config.add_arguments(probe, config.RunConfig)
    group = parser.add_argument_group("simulated backend")
    for action in probe._actions:
        if action.dest in config.SIMULATED_FIELDS:
            group._add_action(action)


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    """The RunConfig options a resume may change, derived from the dataclass like everything else."""
    probe = _OneLineParser(add_help=False)
    config.add_arguments(probe, config.RunConfig)
    group = parser.add_argument_group("overrides")
    for action in probe._actions:
        if action.dest in RUN_ONLY_OVERRIDES:
            group._add_action(action)


def _rewrite_legacy(argv: list[str]) -> list[str]:
    """`esrl train --resume DIR ...` is `esrl resume DIR ...`."""
    if len(argv) >= 3 and argv[0] == "train" and argv[1] == "--resume":
        return ["resume", *argv[2:]]
    if len(argv) >= 2 and argv[0] == "train" and any(a.startswith("--resume") for a in argv):
        i = next(k for k, a in enumerate(argv) if a.startswith("--resume"))
        if argv[i] == "--resume" and i + 1 < len(argv):
            return ["resume", argv[i + 1], *argv[1:i], *argv[i + 2 :]]
    return argv


def _given(args: argparse.Namespace, *classes: type) -> dict[str, Any]:
    fields = {f.name for cls in classes for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in fields}


def _run(algo: str, run: config.RunConfig, cfg: Any, overwrite: bool, resume: bool, quiet: bool) -> dict[str, Any]:
    if algo == "es":
        from esrl.train import train

        if run.backend == "vectorized":  # imports happen before the clock starts, as for every backend
            import esrl.es.vectorized  # noqa: F401

        return train(run, cfg, overwrite=overwrite, resume=resume, show_progress=not quiet)
    from esrl.train_rl import train_rl

    return train_rl(algo, run, cfg, overwrite=overwrite, resume=resume, show_progress=not quiet)


def _train(args: argparse.Namespace) -> int:
    algo_cls = config.ALGORITHMS[args.algo]
    values = config.load_file(args.config) if args.config else {}
    values.update(_given(args, config.RunConfig, algo_cls))
    values, preset = zoo.resolve(args.algo, values, from_config_file=bool(args.config))
    run_vals, algo_vals = config.split_settings(values, algo_cls)
    run = config.build(config.RunConfig, run_vals)
    cfg = config.build(algo_cls, algo_vals)
    if preset != "none" and not args.quiet:
        # bad input is refused first, in one line, as train() would refuse it
        cfg.validate()
        config.check_combination(args.algo, run, cfg)
        run.validate()
        print(f"esrl: settings from the zoo: {preset} (--preset none: without)", file=sys.stderr)
    print(json.dumps(_run(args.algo, run, cfg, args.overwrite, False, args.quiet), indent=2))
    return 0


def _resume(args: argparse.Namespace) -> int:
    algo, run, cfg = config.load_run(args.run_dir)
    overrides = {k: v for k, v in _given(args, config.RunConfig).items() if k != "run_dir"}
    run = dataclasses.replace(run, **overrides, run_dir=args.run_dir)
    print(json.dumps(_run(algo, run, cfg, False, True, args.quiet), indent=2))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from esrl.experiments.sweep import SweepSpec, sweep

    values: dict[str, Any] = config.load_file(args.config) if args.config else {}
    for key in ("algos", "workers"):
        v = getattr(args, key)
        if v is not None:
            values[key] = v
    for key in ("env", "seeds", "backend", "address", "device", "target_return", "max_seconds", "preset",
                "population_per_worker"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if isinstance(values.get("algos"), str):
        values["algos"] = [a.strip() for a in values["algos"].split(",") if a.strip()]
    if isinstance(values.get("workers"), str):
        try:
            values["workers"] = [int(w) for w in values["workers"].split(",")]
        except ValueError:
            raise InputError("workers", f"not a list of integers: {values['workers']!r}") from None
    sim = {k: v for k, v in vars(args).items() if k in config.SIMULATED_FIELDS}
    if sim:
        values["sim"] = {**values.get("sim", {}), **sim}
    values.setdefault("algos", ["es", "a3c"])
    known = {f.name for f in dataclasses.fields(SweepSpec)}
    for key in values:
        if key not in known:
            raise InputError(key, "unknown sweep setting", ", ".join(sorted(known)))
    spec = SweepSpec(**values)
    records = sweep(spec, args.out, show_progress=not args.quiet)
    print(json.dumps({"out": args.out, "runs": records}, indent=2))
    return 0


def _tune(args: argparse.Namespace) -> int:
    from esrl.tune import tune  # imports optuna: only `esrl tune` needs it

    spec = config.build(TuneSpec, _given(args, TuneSpec))
    try:
        result = tune(args.algo, spec, quiet=args.quiet)
    except KeyboardInterrupt:
        print("esrl: interrupted; the same esrl tune command continues the study, the cut trial first",
              file=sys.stderr)
        return 130
    print(json.dumps(result, indent=2))
    return 0


def _report(args: argparse.Namespace) -> int:
    from esrl.experiments.report import report

    if not args.bandwidth_gbit > 0:
        raise InputError("bandwidth_gbit", f"must be > 0, got {args.bandwidth_gbit}")
    if not args.latency_us >= 0:
        raise InputError("latency_us", f"must be >= 0, got {args.latency_us}")
    out = report(args.sweep_dir, bandwidth=args.bandwidth_gbit * 1e9 / 8, latency=args.latency_us * 1e-6,
                 beside=args.beside)
    print(f"report: {out['report_md']}\nreport: {out['report_html']}\nreport: {out['report_json']}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from esrl.evaluate import evaluate

    if args.episodes < 1:
        raise InputError("episodes", f"must be >= 1, got {args.episodes}")
    print(json.dumps(evaluate(args.run_dir, args.episodes, args.seed, args.video, args.checkpoint), indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from esrl.export import export

    print(json.dumps(export(args.run_dir, args.format, args.checkpoint, args.out), indent=2))
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops like Ctrl-C: the last iteration is checkpointed




def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    argv = _rewrite_legacy(list(sys.argv[1:] if argv is None else argv))
    parser = _parser()
    if argv[:1] == ["resume"]:
        parser.unknown_hint = "a resume may change only " + ", ".join(RUN_ONLY_OVERRIDES)  # type: ignore[attr-defined]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2 with its own one-line message
        return int(exc.code or 0)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "resume":
            return _resume(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "report":
            return _report(args)
        if args.command == "export":
            return _export(args)
        if args.command == "tune":
            return _tune(args)
        return _evaluate(args)
    except InputError as exc:
        print(f"esrl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("esrl: interrupted; the run directory holds a checkpoint to resume from", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
