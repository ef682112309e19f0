"""The zoo: tuned settings per (algorithm, env), verified by runs (docs/zoo.md), picked automatically.

Layout of `configs/zoo/` (or `$ESRL_ZOO_DIR`):
- `envs.toml`: one table per env id with the *measurement* settings every algorithm shares on that env
  (target_return where Gymnasium has no reward_threshold, eval_every_steps, eval_episodes). They are the
  env's, not an algorithm's, so that every arm of a study is measured on the same schedule.
- `ALGO/ENV.toml` (ENV with "/" written as "-", as in `ALE-Pong-v5.toml`): that algorithm's settings on
  that env, flat keys named like the options. `esrl tune` writes files of this form.

Precedence, lowest first: the dataclass defaults, the env's measurement settings, the algorithm's preset,
then `--config FILE` (which replaces the zoo entirely) and the options given on the command line.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any

from esrl.errors import InputError

ENVS_FILE = "envs.toml"
# run settings that belong to the env (envs.toml), shared by every arm; a preset of ALGO/ENV.toml holds none
MEASUREMENT = ("target_return", "eval_every_steps", "eval_episodes", "confirm_episodes")


def zoo_dir() -> Path:
    """Where the presets live: $ESRL_ZOO_DIR, else configs/zoo/ of the source checkout esrl runs from."""
    env = os.environ.get("ESRL_ZOO_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "configs" / "zoo"


def file_name(env_id: str) -> str:
    """The preset file name of an env id: "/" becomes "-" (ALE/Pong-v5 -> ALE-Pong-v5.toml)."""
    return env_id.replace("/", "-") + ".toml"


def preset_path(algo: str, env_id: str) -> Path | None:
    """configs/zoo/ALGO/ENV.toml when it exists."""
    p = zoo_dir() / algo / file_name(env_id)
    return p if p.is_file() else None


def _read_toml(path: Path, field: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise InputError(field, f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(field, f"cannot parse {path}: {exc}") from None


def env_settings(env_id: str) -> dict[str, Any]:
    """The measurement settings of an env from envs.toml ({} when it has none)."""
    path = zoo_dir() / ENVS_FILE
    if not path.is_file():
        return {}
    table = _read_toml(path, "preset").get(env_id, {})
    if not isinstance(table, dict):
        raise InputError("preset", f"{path}: [{env_id!r}] must be a table of settings")
    for k in table:
        if k not in MEASUREMENT:
            raise InputError(k, f"{path}: [{env_id!r}] holds a setting that is not a measurement setting",
                             ", ".join(MEASUREMENT))
    return dict(table)


def entries() -> list[tuple[str, str, Path]]:
    """Every preset in the zoo: (algorithm, env id, file), the env id read from the file's `env` key."""
    from esrl.config import ALGORITHMS

    out = []
    for algo in ALGORITHMS:
        for p in sorted((zoo_dir() / algo).glob("*.toml")):
            env_id = _read_toml(p, "preset").get("env")
            if not isinstance(env_id, str):
                raise InputError("preset", f"{p} names no env (a line env = \"ID\")")
            out.append((algo, env_id, p))
    return out


def algo_preset(algo: str, env_id: str, path: str | Path | None = None) -> tuple[dict[str, Any], str]:
    """An algorithm's preset for an env: (its settings, the file's path as recorded), ({}, "none") without one.

    `path`: a preset file to use instead of configs/zoo/ALGO/ENV.toml.
    """
    from esrl.config_files import load_file

    p = preset_path(algo, env_id) if path is None else Path(path)
    if p is None:
        return {}, "none"
    if not p.is_file():
        raise InputError("preset", f"no preset file {p}", "auto, none or an existing .toml file")
    return _checked(p, algo, env_id, load_file(p)), str(p)


def resolve(algo: str, values: dict[str, Any], from_config_file: bool) -> tuple[dict[str, Any], str]:
    """The settings of a run with the zoo beneath them: (merged values, the preset recorded in config.json).

    `values` are the settings given (config file and options, flat); their `preset` (default auto) decides:
    none uses no zoo; a file uses that file; auto uses the env's zoo entries unless a config file was given.
    The env's measurement settings (envs.toml) come with any preset, so every algorithm on an env is
    measured on the same schedule.
    """
    from esrl.config import RunConfig

    choice = str(values.get("preset", "auto"))
    env_id = str(values.get("env", RunConfig.env))
    if choice == "none" or (choice == "auto" and from_config_file):
        return {**values, "preset": "none"}, "none"
    settings, label = algo_preset(algo, env_id, None if choice == "auto" else choice)
    measurement = env_settings(env_id)
    label = recorded(label, measurement)
    return {**measurement, **settings, **values, "preset": label}, label


def recorded(label: str, measurement: dict[str, Any]) -> str:
    """What config.json records as the preset: the algorithm's file, else envs.toml when only the env's
    measurement settings applied, else none."""
    return str(zoo_dir() / ENVS_FILE) if label == "none" and measurement else label


def _checked(path: Path, algo: str, env_id: str, values: dict[str, Any]) -> dict[str, Any]:
    """A preset's algorithm settings: it must be for this env and algorithm, and hold nothing else."""
    from esrl.config import ALGORITHMS

    named = values.get("env", env_id)
    if named != env_id:
        raise InputError("preset", f"{path} is tuned for {named}, and the run's env is {env_id}",
                         f"a preset for {env_id}, or --preset none")
    stated = values.get("algorithm", algo)
    if stated != algo:
        raise InputError("preset", f"{path} holds {stated} settings, and the run trains {algo}",
                         f"a preset for {algo}, or --preset none")
    fields = {f.name for f in dataclasses.fields(ALGORITHMS[algo])}
    for k in values:
        if k not in fields and k not in ("env", "algorithm"):
            where = (f"the env's measurement (configs/zoo/{ENVS_FILE}), shared by every algorithm"
                     if k in MEASUREMENT else f"not a {algo} setting")
            raise InputError(k, f"{path}: a preset holds {algo} settings only; this is {where}",
                             ", ".join(sorted(fields)))
    return {k: v for k, v in values.items() if k not in ("env", "algorithm")}
