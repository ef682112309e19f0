"""What the device arrangements of A3C (GA3C) and DQN share: CPU actor processes around a model
that lives on one torch device in the coordinator.

The coordinator owns the flat parameters and the optimizer state on the device and runs
the learner (and, for GA3C, the predictor) as threads; actors are forked processes that
step Gymnasium envs on the CPU and send what they see through queues. The arrangement is
both the "pool" and the "store" of `esrl.train_rl`: it answers `start`, `poll`, `close`,
`traffic`, `events`, `staleness`, `live_workers`, `snapshot`, `load`, `pause`, `resume`,
`transport`. Actors are forked before any thread starts. A dead actor or a failing thread ends the run with the cause
named (`WorkerFailure`); actors are not replaced, since forking a process that runs
threads can copy a lock another thread held.

Traffic: every message an actor puts on a queue, every reply it reads, every copy of the
parameters it takes from shared memory and every report it sends is counted (reports as
kind "report", received). Pausing: a shared flag; actors look at it between their units of
work (a trajectory, a batch of transitions) and the learner thread before each update; a
predictor keeps answering, so an actor in the middle of a trajectory can finish it.
"""

from __future__ import annotations

import pickle
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from esrl.backends.base import Traffic, WorkerFailure
from esrl.errors import NonFiniteError
from esrl.rl import optim
from esrl.rl.common import Report
from esrl.shm import PAUSE_NAP_S, Flag, die_with_parent, hold

REPORT_S = 0.1


class ActorLink:
    """An actor's end: its queues, byte counts and the report it sends every REPORT_S seconds."""

    def __init__(self, wid: int, reports: Any, stop: Flag, pause: Flag) -> None:
        self.wid, self.reports, self.stop, self.pause = wid, reports, stop, pause
        self.traffic = Traffic()
        self.acc = Report()
        self.staleness: list[int] = []
        self.last = time.perf_counter()
        self.compute_t0 = time.perf_counter()

    def send(self, q: Any, kind: str, payload: Any) -> None:
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        self.traffic.sent[kind] += len(data)
        self.traffic.messages += 1
        q.put(data)

    def ready(self) -> bool:
        """Between two units of work: wait out a pause (reporting first); False once the run stops."""
        if self.pause.is_set():
            self.maybe_report(force=True)
            return hold(self.pause, self.stop)
        return not self.stop.is_set()

    def maybe_report(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self.last >= REPORT_S:
            self.reports.put(pickle.dumps(("report", self.wid, self.acc, self.traffic, self.staleness)))
            self.acc, self.traffic, self.staleness, self.last = Report(), Traffic(), [], now


def actor_main(body: Callable[[ActorLink], None], wid: int, reports: Any, stop: Flag, pause: Flag,
               queues: list[Any]) -> None:
    """An actor process: run `body` until the stop flag; report failures as the pool's workers do."""
    die_with_parent()
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    for q in queues:  # what is still buffered when the run stops may be dropped; exiting must not wait on it
        q.cancel_join_thread()
    link = ActorLink(wid, reports, stop, pause)
    try:
        body(link)
        link.maybe_report(force=True)
        reports.put(pickle.dumps(("done", wid)))
    except Exception as exc:
        kind = "nonfinite" if isinstance(exc, NonFiniteError) else "error"
        reports.put(pickle.dumps((kind, wid, f"actor {wid}: {exc}" if kind == "nonfinite" else traceback.format_exc())))


class DeviceArrangement:
    """Base: device parameters + optimizer, actor processes, learner threads; see the module docstring."""

    threads: tuple[str, ...] = ()  # names of methods run as threads until `close`
    transport = "pipe"  # what actors send and receive goes through queues and pipes (pickled)

    def __init__(self, setup: Any, params: torch.Tensor, spec: optim.OptimSpec, workers: int, ctx: Any,
                 device: torch.device) -> None:
        self.setup, self.cfg, self.n, self.ctx, self.device = setup, setup.cfg, workers, ctx, device
        self.model = setup.build_model().to(device)
        self.flat = params.detach().clone().to(device)
        self.opt_spec = spec
        self.opt_state = {k: v.to(device) for k, v in spec.init_state(self.flat.numel()).items()}
        self.version = 0
        self.lock = threading.Lock()  # parameter writes vs reads (predictions, snapshots)
        self._load_model()
        self.traffic = Traffic()
        self.events: list[dict[str, Any]] = []
        self.staleness: list[int] = []
        self.reports = ctx.Queue()
        self.stop = Flag(ctx)
        self.paused = Flag(ctx)  # read by the actors and by the learner threads
        self.halt = threading.Event()
        self.procs: dict[int, Any] = {}
        self._threads: list[threading.Thread] = []
        self._pending = Report()  # what the learner thread did since the last poll
        self._pending_lock = threading.Lock()
        self._error: BaseException | None = None

    # --- the store side ----------------------------------------------------------------------
    def _load_model(self) -> None:
        from esrl.rl import nets

        nets.set_flat(self.model, self.flat)

    def apply(self, grad: torch.Tensor) -> int:
        """One optimizer step on the device parameters; returns the new version."""
        with self.lock:
            self.version += 1
            optim.apply(self.opt_spec, self.flat, grad, self.opt_state, self.version)
            self._load_model()
            return self.version

    def snapshot(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        with self.lock:
            return (self.flat.cpu().clone(), {k: v.cpu().clone() for k, v in self.opt_state.items()}, self.version)

    def load(self, params: torch.Tensor, state: dict[str, torch.Tensor], version: int) -> None:
        with self.lock:
            self.flat.copy_(params.to(self.device))
            for k, v in state.items():
                self.opt_state[k].copy_(v.to(self.device))
            self.version = version
            self._load_model()

    # --- the pool side -----------------------------------------------------------------------
    @property
    def live_workers(self) -> int:
        return sum(p.is_alive() for p in self.procs.values())

    def actor_body(self, wid: int) -> tuple[Callable[[ActorLink], None], list[Any]]:
        """The actor's loop and the queues it puts on."""
        raise NotImplementedError

    def start(self) -> None:
        for wid in range(self.n):  # every fork before any thread
            body, queues = self.actor_body(wid)
            proc = self.ctx.Process(target=actor_main, args=(body, wid, self.reports, self.stop, self.paused, queues),
                                    daemon=True)
            proc.start()
            self.procs[wid] = proc
        self.after_fork()
        for name in self.threads:
            th = threading.Thread(target=self._guard, args=(getattr(self, name),), name=name, daemon=True)
            th.start()
            self._threads.append(th)

    def after_fork(self) -> None:
        """Close what only the actors use (pipe ends) once they are forked."""

    def pause(self) -> None:
        """From now on no actor begins a unit of work and the learner no update; returns at once."""
        self.paused.set()

    def settle(self, timeout: float = 10.0) -> list[Any]:
        """After `pause`. The learner runs in this process, so its updates are already counted in the
        store; what actors stepped since their last report arrives with their next one (at most
        REPORT_S late): env steps to threshold may lag by that much here, unlike the pools."""
        return []

    def resume(self) -> None:
        self.paused.clear()

    def learner_paused(self) -> bool:
        """For a learner thread, before each update: True (after a short nap) while the run is paused."""
        if self.paused.is_set():
            time.sleep(PAUSE_NAP_S)
            return True
        return False

    def _guard(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        except BaseException as exc:  # the coordinator re-raises it from poll
            self._error = exc
            self.halt.set()

    def credit(self, report: Report, staleness: list[int] | None = None) -> None:
        with self._pending_lock:
            self._pending.merge(report)
            if staleness:
                self.staleness.extend(staleness)

    def _take(self, raw: bytes) -> list[Report]:
        kind, _wid, *body = pickle.loads(raw)
        self.traffic.received["report"] += len(raw)
        self.traffic.messages += 1
        if kind == "report":
            rep, traffic, staleness = body
            self.traffic.add(traffic)
            self.staleness.extend(staleness)
            return [rep]
        if kind == "done":
            return []
        raise WorkerFailure(body[0], nonfinite=(kind == "nonfinite"))

    def poll(self, timeout: float) -> list[Report]:
        if self._error is not None:
            exc = self._error
            nonfinite = isinstance(exc, NonFiniteError)
            raise WorkerFailure(str(exc) if nonfinite else "".join(traceback.format_exception(exc)), nonfinite)
        out: list[Report] = []
        try:
            out += self._take(self.reports.get(timeout=timeout))
            while True:
                out += self._take(self.reports.get_nowait())
        except queue.Empty:
            pass
        for wid, proc in self.procs.items():
            if not proc.is_alive() and not self.stop.is_set():
                raise WorkerFailure(f"actor {wid} died (exit code {proc.exitcode}); device arrangements do not "
                                    "replace actors")
        with self._pending_lock:
            mine, self._pending = self._pending, Report()
        return [*out, mine]

    def close(self) -> list[Report]:
        """Stop the actors (collecting their last reports), then the threads; a second call does nothing."""
        if self.halt.is_set() and self.stop.is_set():
            return []
        self.stop.set()
        out: list[Report] = []
        deadline = time.monotonic() + 5
        done: set[int] = set()
        while time.monotonic() < deadline and any(p.is_alive() and w not in done for w, p in self.procs.items()):
            try:
                raw = self.reports.get(timeout=0.05)
            except queue.Empty:
                continue
            kind, wid, *_ = pickle.loads(raw)
            try:
                out += self._take(raw)
            except WorkerFailure:
                pass
            if kind == "done":
                done.add(wid)
        while True:  # what exited actors left in the queue
            try:
                raw = self.reports.get(timeout=0.01)
            except queue.Empty:
                break
            try:
                out += self._take(raw)
            except WorkerFailure:
                pass
        self.halt.set()
        for th in self._threads:
            th.join(5)
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        with self._pending_lock:
            out.append(self._pending)
            self._pending = Report()
        return out


def device_arrangement(algo: str, run: Any, cfg: Any) -> str | None:
    """'ga3c' (A3C) or 'device' (DQN) when the run asks for a device arrangement, else None.

    Asked for by its name only (`--sync ga3c` / `--sync device`): `--device` says where that
    arrangement's model lives, it never chooses one (`config.check_combination` refuses
    `--device cuda` with a CPU arrangement).
    """
    from esrl.config import DEVICE_SYNC
    from esrl.errors import InputError

    name = DEVICE_SYNC.get(algo)
    if name is None or cfg.sync != name:
        return None
    if run.backend != "processes":
        raise InputError("backend", f"the {name} arrangement runs its actors as processes, not {run.backend!r}",
                         "processes")
    return name


def make_arrangement(name: str, setup: Any, params: torch.Tensor, spec: optim.OptimSpec, workers: int, ctx: Any,
                     device: str) -> DeviceArrangement:
    """The named arrangement on `device`, a torch device name ("auto" is resolved by the training loop)."""
    if name == "ga3c":
        from esrl.rl.ga3c import GA3C

        return GA3C(setup, params, spec, workers, ctx, torch.device(device))
    from esrl.rl.device_dqn import DeviceDQN

    return DeviceDQN(setup, params, spec, workers, ctx, torch.device(device))
