"""Config files and stored configs: a flat mapping (TOML, YAML, JSON, a run's config.json) into the dataclasses."""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esrl.config_cli import base_type, parse_ints
from esrl.errors import InputError

if TYPE_CHECKING:
    from esrl.config import RunConfig


def build(cls: type, values: dict[str, Any]) -> Any:
    """An instance of `cls` from a mapping, coercing types; unknown keys are errors."""
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            raise InputError(key, f"unknown setting for {cls.__name__}", ", ".join(sorted(names)))
        out[key] = _coerce(key, base_type(hints[key]), value)
    return cls(**out)


def _coerce(key: str, tp: Any, value: Any) -> Any:
    if value is None:
        return None
    try:
        if typing.get_origin(tp) is tuple:
            return parse_ints(value) if isinstance(value, str) else tuple(int(v) for v in value)
        if tp is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if tp is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if tp is str and isinstance(value, str):
            return value
    except (TypeError, ValueError):
        pass
    else:
        if tp not in (bool, float, int, str):
            return value
    raise InputError(key, f"expected {getattr(tp, '__name__', tp)}, got {value!r}")


def load_file(path: str | Path) -> dict[str, Any]:
    """A flat mapping of settings from a .toml, .yaml/.yml or .json file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InputError("config", f"cannot read {p}: {exc.strerror}") from None
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            raise InputError("config", f"unknown file type {p.suffix!r}", ".toml, .yaml, .yml, .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError("config", f"cannot parse {p}: {exc}".splitlines()[0]) from None
    except Exception as exc:  # yaml.YAMLError without importing yaml at module level
        raise InputError("config", f"cannot parse {p}: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise InputError("config", f"{p} must hold a mapping of setting: value")
    return data


def split_settings(values: dict[str, Any], algo_cls: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a flat mapping into (run settings, algorithm settings); unknown keys are errors."""
    from esrl.config import RunConfig  # the schema re-exports this module

    run_names = {f.name for f in dataclasses.fields(RunConfig)}
    algo_names = {f.name for f in dataclasses.fields(algo_cls)}
    run, algo = {}, {}
    for k, v in values.items():
        k = k.replace("-", "_")
        if k in run_names:
            run[k] = v
        elif k in algo_names:
            algo[k] = v
        else:
            raise InputError(k, "unknown setting", ", ".join(sorted(run_names | algo_names)))
    return run, algo


def load_run(run_dir: str | Path) -> tuple[str, RunConfig, Any]:
    """(algorithm, run config, algorithm config) stored in a run directory's config.json."""
    from esrl.config import ALGORITHMS, RunConfig
    from esrl.runs.rundir import RunDir

    data = RunDir.open(run_dir).read_json("config.json")
    algo = data.get("algorithm") if isinstance(data, dict) else None
    if algo not in ALGORITHMS or algo not in data:
        raise InputError("run_dir", f"{run_dir}/config.json names no known algorithm", ", ".join(ALGORITHMS))
    values = data[algo]
    if algo != "es" and isinstance(values, dict):  # runs recorded before these settings trained without them
        values = {"obs_norm": "off", "clip_rewards": "off", **values}
    return algo, build(RunConfig, data["run"]), build(ALGORITHMS[algo], values)
