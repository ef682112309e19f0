"""The machine a sweep ran on: CPU, memory, GPU, OS, library versions and the esrl commit.

Every piece is gathered on its own and guarded: what cannot be found is "unknown", never an error.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

UNKNOWN = "unknown"
LIBRARIES = ("numpy", "torch", "gymnasium", "ray", "esrl")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or UNKNOWN


def _cores() -> dict[str, Any]:
    logical: Any = os.cpu_count() or UNKNOWN
    physical: Any = UNKNOWN
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or UNKNOWN
    except Exception:
        try:  # Linux without psutil: distinct (physical id, core id) pairs
            pairs, phys = set(), "0"
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("physical id"):
                    phys = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    pairs.add((phys, line.split(":", 1)[1].strip()))
            physical = len(pairs) or UNKNOWN
        except OSError:
            pass
    try:
        usable: Any = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = logical
    return {"cores_logical": logical, "cores_physical": physical, "cores_usable": usable}


def _memory_gib() -> Any:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 2**30, 1)
    except (OSError, ValueError, IndexError):
        pass
    return UNKNOWN


def _gpus() -> Any:
    try:
        import torch

        if not torch.cuda.is_available():
            return "none"
        return [f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)"
                for i in range(torch.cuda.device_count())]
    except Exception:
        return UNKNOWN


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except Exception:
        return "not installed" if name != "esrl" else UNKNOWN


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def gather() -> dict[str, Any]:
    """A flat description of this machine and software, JSON-ready."""
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    info: dict[str, Any] = {"cpu": _cpu_model(), **_cores(), "memory_gib": _memory_gib(), "gpu": _gpus(),
                            "os": platform.platform() or UNKNOWN, "python": platform.python_version() or UNKNOWN}
    info.update({lib: _version(lib) for lib in LIBRARIES})
    info["commit"] = commit or UNKNOWN
    info["commit_dirty"] = UNKNOWN if dirty is None else bool(dirty)
    return info


def describe(machine: dict[str, Any]) -> list[str]:
    """Markdown table rows (key | value) for the report."""
    names = {"cpu": "CPU", "cores_logical": "cores (logical)", "cores_physical": "cores (physical)",
             "cores_usable": "cores usable by this process", "memory_gib": "memory (GiB)", "gpu": "GPU", "os": "OS",
             "python": "Python", "numpy": "numpy", "torch": "torch", "gymnasium": "gymnasium", "ray": "ray",
             "esrl": "esrl", "commit": "git commit", "commit_dirty": "uncommitted changes", "started": "sweep started"}
    rows = []
    for key, label in names.items():
        if key in machine:
            v = machine[key]
            rows.append(f"| {label} | {', '.join(map(str, v)) if isinstance(v, list) else v} |")
    return rows
