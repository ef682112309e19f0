"""Fault injection on the processes backend: a worker dies mid-iteration; a replica drifts."""

import dataclasses
import os
from pathlib import Path

import numpy as np

from esrl.es.algorithm import ESReplica, ESSetup
from esrl.train import train
from tests.conftest import final_state, tiny_es, tiny_run


def _claim(marker: Path) -> bool:
    """True for exactly one caller across processes (O_EXCL create)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


class DyingReplica(ESReplica):
    def run(self, task):
        if task[0] == "pop" and task[1] == 3 and _claim(self.setup.marker):  # type: ignore[attr-defined]
            os._exit(9)  # die mid-iteration, holding a task
        return super().run(task)


class DriftingReplica(ESReplica):
    def apply(self, update):
        norm = super().apply(update)
        if self.iteration == 2 and _claim(self.setup.marker):  # type: ignore[attr-defined]
            self.theta = self.theta + np.float32(1e-3)
        return norm


@dataclasses.dataclass(frozen=True)
class FaultySetup(ESSetup):
    marker: Path = Path()
    replica_cls: type = ESReplica

    def build(self):
        return self.replica_cls(self)


def _wrap(marker: Path, cls: type):
    return lambda s: FaultySetup(s.cfg, s.spec, s.seed, marker, cls)


def _events(run_dir: Path):
    import json

    return [e for line in (run_dir / "metrics.jsonl").read_text().splitlines() for e in json.loads(line)["events"]]


def test_dead_worker_is_replaced_and_the_result_is_unchanged(tmp_path):
    train(tiny_run(tmp_path / "clean", backend="processes", workers=2), tiny_es(), show_progress=False)
    faulty = tmp_path / "faulty"
    train(tiny_run(faulty, backend="processes", workers=2), tiny_es(), show_progress=False,
          worker_setup=_wrap(tmp_path / "died", DyingReplica))
    assert (tmp_path / "died").exists()  # the fault really fired
    kinds = [e["event"] for e in _events(faulty)]
    assert "worker_died" in kinds and "worker_replaced" in kinds
    died = next(e for e in _events(faulty) if e["event"] == "worker_died")
    assert died["exitcode"] == 9 and died["requeued_task"] is not None
    assert np.array_equal(final_state(faulty)["theta"], final_state(tmp_path / "clean")["theta"])


def test_drifted_replica_is_detected_and_resynced(tmp_path):
    train(tiny_run(tmp_path / "clean", backend="processes", workers=2), tiny_es(), show_progress=False)
    drift = tmp_path / "drift"
    train(tiny_run(drift, backend="processes", workers=2, verify_every=1), tiny_es(), show_progress=False,
          worker_setup=_wrap(tmp_path / "drifted", DriftingReplica))
    assert (tmp_path / "drifted").exists()
    resyncs = [e for e in _events(drift) if e["event"] == "resync"]
    assert len(resyncs) == 1
    assert np.array_equal(final_state(drift)["theta"], final_state(tmp_path / "clean")["theta"])


def test_every_message_is_counted_by_kind(tmp_path):
    import json

    d = tmp_path / "r"
    train(tiny_run(d, backend="processes", workers=2), tiny_es(), show_progress=False)
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    for m in lines:
        assert m["bytes_sent"]["task"] > 0 and m["bytes_received"]["result"] > 0
        assert m["bytes_sent_total"] == sum(m["bytes_sent"].values())
    # the broadcast carries one float per member plus small headers: far less than theta's 4 bytes x params
    assert all(m["bytes_sent"].get("apply", 0) < 2 * (4 * 16 + 600) for m in lines)


def test_es_traffic_does_not_grow_with_the_parameter_count(tmp_path):
    """Scalars only: a 66k-parameter policy moves the same bytes per iteration as a 100-parameter one."""
    import json

    per_kind = {}
    for hidden in [(8,), (256, 256)]:
        d = tmp_path / f"h{len(hidden)}"
        train(tiny_run(d, backend="processes", workers=2, max_iterations=3, eval_episodes=1),
              tiny_es(hidden=hidden, obs_norm=False, noise_table_size=0), show_progress=False)
        lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        per_kind[hidden] = {k: lines[1]["bytes_sent"][k] for k in ("task", "apply")}
    assert per_kind[(8,)] == per_kind[(256, 256)]


def test_workers_die_with_a_killed_coordinator(tmp_path):
    """SIGKILL to the coordinator alone: the kernel takes its workers too (no orphans)."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "esrl.cli", "train", "es", "--workers", "2", "--max-seconds", "60",
                             "--target-return", "1e9", "--run-dir", str(tmp_path / "r"), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(children) < 2:
        time.sleep(0.05)
        try:
            children = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        except OSError:
            children = []
    assert len(children) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{c}").exists() and "Z" not in
                                              Path(f"/proc/{c}/stat").read_text().split()[2] for c in children):
        time.sleep(0.05)
    assert not any(Path(f"/proc/{c}").exists() and "Z" not in Path(f"/proc/{c}/stat").read_text().split()[2]
                   for c in children)


def _late_child(pidfile: str) -> None:
    import time

    from esrl.shm import die_with_parent

    while os.getppid() == int(Path(pidfile).read_text()):  # the parent dies before this child asks
        time.sleep(0.01)
    die_with_parent()
    time.sleep(60)  # reached only if die_with_parent let an orphan live


def _parent_that_dies(pidfile: str, childfile: str) -> None:
    import multiprocessing as mp

    Path(pidfile).write_text(str(os.getpid()))
    child = mp.get_context("fork").Process(target=_late_child, args=(pidfile,))
    child.start()
    Path(childfile).write_text(str(child.pid))
    os._exit(0)


def test_a_worker_whose_parent_died_before_it_asked_exits(tmp_path):
    """PR_SET_PDEATHSIG only covers a parent that dies later: a worker orphaned while it was still
    starting (the coordinator SIGKILLed within milliseconds of the fork) must notice and exit."""
    import multiprocessing as mp
    import time

    pidfile, childfile = tmp_path / "parent", tmp_path / "child"
    proc = mp.get_context("fork").Process(target=_parent_that_dies, args=(str(pidfile), str(childfile)))
    proc.start()
    proc.join(10)
    pid = int(childfile.read_text())
    deadline = time.monotonic() + 10

    def alive() -> bool:
        try:
            return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            return False

    while time.monotonic() < deadline and alive():
        time.sleep(0.05)
    assert not alive()
