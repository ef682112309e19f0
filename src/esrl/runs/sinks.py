"""Where a metrics line goes besides metrics.jsonl: TensorBoard event files and the caller's callbacks.

Both training loops write their lines through `RunDir.append_metrics`, which hands each line
to the sinks attached here, so ES and RL reach TensorBoard and callbacks on one code path.

The event files are written with tensorboard's own record framing and protos, synchronously
and without tensorboard's `EventFileWriter`: that writer flushes from a background thread,
and the coordinator forks workers (and replacements, mid-run) after the run directory
exists; a thread alive at a fork can leave a lock held in the child. Each line is one
`write` to a file opened for it, as metrics.jsonl is, so a forked child inherits no open
file and a kill tears at most the last record of one session's file.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

# imported with the training loop, before its clock starts (about 0.3 s here)
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

from esrl.config import RunConfig
from esrl.runs.rundir import RunDir

Callback = Callable[[dict[str, Any]], Any]

# TensorBoard groups tags by the part before '/'; keys not named here go to "run/"
GROUPS = {
    "return_mean": "returns", "return_max": "returns", "return_min": "returns", "eval_return": "returns",
    "unperturbed_rank": "returns",
    "steps_per_s": "speed", "updates_per_s": "speed", "iteration_s": "speed",
    "bytes_sent_total": "traffic", "bytes_received_total": "traffic", "messages": "traffic",
    "staleness_mean": "staleness", "staleness_max": "staleness",
    "wall_s": "time", "training_s": "time", "compute_s": "time", "wait_s": "time",
}


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics line as TensorBoard tags: `group/key`, and `key/name` for the
    per-kind dicts (`bytes_sent/task`, `losses/policy`, `counts/simulated_transitions`)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            for name, v in value.items():
                if _number(v):
                    out[f"{key}/{name}"] = float(v)
        elif _number(value):
            out[f"{GROUPS.get(key, 'run')}/{key}"] = float(value)
    return out


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class TensorBoardSink:
    """Scalars of each metrics line into `directory`, one event file per session, `env_steps` as the step."""

    def __init__(self, directory: Path, purge_step: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / _file_name(directory)
        first = [Event(wall_time=time.time(), file_version="brain.Event:2")]
        if purge_step is not None:
            # a resumed run: TensorBoard hides what the killed session logged at or past this step
            first.append(Event(wall_time=time.time(), step=purge_step, session_log=SessionLog(status=SessionLog.START)))
        self._write(first)

    def __call__(self, record: dict[str, Any]) -> None:
        values = [Summary.Value(tag=tag, simple_value=v) for tag, v in scalars(record).items()]
        if values:
            self._write([Event(wall_time=time.time(), step=int(record.get("env_steps") or 0),
                               summary=Summary(value=values))])

    def _write(self, events: Iterable[Event]) -> None:
        chunks: list[bytes] = []
        framing = RecordWriter(_Collect(chunks))
        for e in events:
            framing.write(e.SerializeToString())
        with open(self.path, "ab") as f:
            f.write(b"".join(chunks))


class _Collect:
    """A file-like sink for RecordWriter: the records of one line are written with one `write`."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


def _file_name(directory: Path) -> str:
    # TensorBoard reads a directory's event files in name order: a resumed session's file must
    # sort after the earlier ones even within the same second or from a lower process id
    stamps = [int(p.name.split(".")[3]) for p in directory.glob("events.out.tfevents.*")
              if p.name.split(".")[3:4] and p.name.split(".")[3].isdigit()]
    stamp = max([int(time.time()), *(s + 1 for s in stamps)])
    return f"events.out.tfevents.{stamp:010d}.{socket.gethostname()}.{os.getpid()}.esrl"


def attach(rd: RunDir, run: RunConfig, callbacks: Iterable[Callback] | None = None) -> None:
    """Give `rd` its sinks: TensorBoard under RUN/tb/ (unless `run.tensorboard` is off), then the callbacks."""
    sinks: list[Callback] = []
    if run.tensorboard:
        sinks.append(TensorBoardSink(rd.path / "tb", rd.purge_step))
    sinks.extend(callbacks or ())
    rd.sinks = sinks
