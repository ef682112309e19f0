"""Local worker processes: the embedded default.

No multiprocessing.Pool (it hangs when a worker dies). Each worker is a Process with its
own pipe; the coordinator waits on the pipes and on the process sentinels together, so a
death is seen at once and logged, and a replacement starts (up to `max_restarts` in all).
Every message is pickled here (between our own processes only) and its length counted by kind.

- Replicas (ES): a duplex pipe each. A dead worker's task goes back in the queue and its
  replacement gets a full state sync; the full state a new worker gets (and, under `spawn`,
  the setup its process is started with) is start-up traffic.
- Free-running workers (A3C, DQN, Dyna-Q): each steps its worker until told to stop, sending
  its reports (and the bytes and messages its store client counted) every REPORT_S seconds
  over its pipe (kind "report", received). A replacement starts on a spare store slot with the
  dead worker's role and seeds. `pause()` sets a flag the workers look at before each update
  (the coordinator evaluates meanwhile); each acknowledges with a "paused" message after its
  last report, which `settle()` waits for; `resume()` clears it. Parameters and gradients move
  through the store (shared memory, or pipes to parameter-server processes): `transport` is
  the store's.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from esrl.backends.base import REPORT_S, Traffic, WorkerFailure, absorb, clients_of, count_report, take_report
from esrl.errors import NonFiniteError
from esrl.shm import Flag, die_with_parent, hold

_DUMP = pickle.HIGHEST_PROTOCOL


def context(start_method: str | None = None) -> Any:
    """fork on Linux (workers inherit imported torch and start in milliseconds), spawn elsewhere."""
    return mp.get_context(start_method or ("fork" if sys.platform.startswith("linux") else "spawn"))


def _enter_worker() -> None:
    """What every worker process does first: die with the coordinator, and leave Ctrl-C to it."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _replica_main(conn: Connection, setup: Any) -> None:
    """A replica's process: build it, then serve the coordinator's messages until "stop"."""
    _enter_worker()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        replica = setup.build()
    except Exception:
        conn.send_bytes(pickle.dumps(("error", traceback.format_exc()), _DUMP))
        return
    while True:
        try:
            kind, body = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            if kind == "task":
                tid, task = body
                t0 = time.perf_counter()
                result = replica.run(task)
                conn.send_bytes(pickle.dumps(("result", (tid, result, time.perf_counter() - t0)), _DUMP))
            elif kind == "apply":
                replica.apply(body)
            elif kind == "state":
                replica.set_state(body)
            elif kind == "digest":
                conn.send_bytes(pickle.dumps(("digest", replica.digest()), _DUMP))
            elif kind == "stop":
                return
        except Exception:
            conn.send_bytes(pickle.dumps(("error", traceback.format_exc()), _DUMP))
            return


def _send_report(conn: Connection, wid: int, acc: Any, clients: list[Any], compute: float) -> None:
    traffic = Traffic()
    for c in clients:
        absorb(traffic, c)
    staleness = clients[0].staleness
    for c in clients:
        c.staleness = []
    traffic.compute_s = compute
    conn.send_bytes(pickle.dumps(("report", wid, acc, traffic, staleness)))


def _free_main(setup: Any, wid: int, client: Any, conn: Connection, stop: Flag, pause: Flag) -> None:
    """A free-running worker's process: update after update until `stop`, holding while `pause`, reporting
    every REPORT_S seconds (and at each pause and at the end)."""
    _enter_worker()
    import torch

    torch.set_num_threads(1)
    if hasattr(client, "on_start"):
        client.on_start()
    worker = None
    try:
        worker = setup.build_worker(wid, client)
        clients = clients_of(worker, client)
        acc, compute, last = None, 0.0, time.perf_counter()
        while not stop.is_set():
            if pause.is_set():
                if acc is not None:  # what was done before the pause reaches the coordinator now
                    _send_report(conn, wid, acc, clients, compute)
                    acc, compute = None, 0.0
                conn.send_bytes(pickle.dumps(("paused", wid)))  # after the flush: the coordinator's settle waits for it
                if not hold(pause, stop):
                    break
                last = time.perf_counter()
                continue
            t0 = time.perf_counter()
            rep = worker.step()
            compute += time.perf_counter() - t0
            if acc is None:
                acc = rep
            else:
                acc.merge(rep)
            if time.perf_counter() - last >= REPORT_S:
                _send_report(conn, wid, acc, clients, compute)
                acc, compute, last = None, 0.0, time.perf_counter()
        _send_report(conn, wid, acc, clients, compute)  # the last updates count too
        conn.send_bytes(pickle.dumps(("done", wid)))
    except Exception as exc:
        kind = "nonfinite" if isinstance(exc, NonFiniteError) else "error"
        update = getattr(worker, "updates", 0)
        text = f"worker {wid}, update {update}: {exc}" if kind == "nonfinite" else traceback.format_exc()
        try:
            conn.send_bytes(pickle.dumps((kind, wid, text)))
        except OSError:
            pass


class WorkerError(RuntimeError):
    """A worker raised: the traceback is carried in the message."""


class _Worker:
    def __init__(self, wid: int, proc: Any, conn: Connection) -> None:
        self.wid, self.proc, self.conn = wid, proc, conn
        self.task: tuple[int, Any] | None = None


class ProcessBackend:
    """N worker processes; see the module docstring."""

    transport = "pipe"

    def __init__(self, workers: int, max_restarts: int | None = None, start_method: str | None = None,
                 ctx: Any = None) -> None:
        """`ctx`: the multiprocessing context the run's store was made with (free-running workers share its
        flags and shared memory); else one for `start_method`."""
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.n = workers
        self.max_restarts = 3 * workers if max_restarts is None else max_restarts
        self._ctx: Any = ctx if ctx is not None else context(start_method)
        self.traffic = Traffic()
        self.events: list[dict[str, Any]] = []
        self.staleness: list[int] = []
        self._workers: dict[int, _Worker] = {}
        self._restarts = 0
        # replicas
        self._next_id = 0
        self._dead: list[int] = []
        self._orphans: list[tuple[int, Any]] = []  # tasks whose worker died before answering
        self._setup: Any = None
        self._state_fn: Callable[[], dict[str, Any]] | None = None
        self._setup_bytes = 0
        # free-running workers
        self._store: Any = None
        self._stop = Flag(self._ctx)  # a raw byte: a worker killed mid-check cannot leave it locked
        self._pause = Flag(self._ctx)  # workers look at it before each update; replacements inherit it
        self._acked: set[int] = set()  # workers that acknowledged the current pause
        self._next_slot = 0

    @staticmethod
    def slots_needed(workers: int, max_restarts: int) -> int:
        """Store slots free-running workers may use: one each, and one per replacement."""
        return workers + max_restarts

    @property
    def live_workers(self) -> int:
        return len(self._workers)

    # --- lifecycle ------------------------------------------------------------------------
    def start(self, setup: Any, state_fn: Callable[[], dict[str, Any]] | None = None, store: Any = None) -> None:
        self._setup, self._state_fn = setup, state_fn
        if store is not None:
            self._store = store
            self.transport = getattr(store, "transport", "pipe")
            for index in range(self.n):
                self._spawn_free(index)
            return
        assert state_fn is not None
        if self._ctx.get_start_method() != "fork":  # a forked worker inherits the setup; a spawned one is sent it
            self._setup_bytes = len(pickle.dumps(setup, _DUMP))
        state = state_fn()
        for _ in range(self.n):
            self._spawn(state)

    def _spawn(self, state: dict[str, Any]) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_replica_main, args=(child, self._setup), daemon=True)
        proc.start()
        child.close()
        w = _Worker(self._next_id, proc, parent)
        self._next_id += 1
        self._workers[w.wid] = w
        if self._setup_bytes:
            self.traffic.sent["state"] += self._setup_bytes
            self.traffic.startup += self._setup_bytes
            self.traffic.messages += 1
        self._send(w, "state", state, startup=True)
        return w

    def _spawn_free(self, index: int) -> int:
        """Start free-running worker `index` (its role and seeds) on a fresh store slot; returns the slot."""
        slot = self._next_slot
        self._next_slot += 1
        parent, child = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(target=_free_main, args=(self._setup, index, self._store.client(slot), child,
                                                          self._stop, self._pause), daemon=True)
        proc.start()
        child.close()
        if hasattr(self._store, "release"):
            self._store.release(slot)
        self._workers[index] = _Worker(index, proc, parent)
        return slot

    def close(self) -> list[Any]:
        """Stop the workers; the reports free-running workers sent on the way out."""
        if self._store is not None:
            return self._close_free()
        for w in list(self._workers.values()):
            try:
                w.conn.send_bytes(pickle.dumps(("stop", None), _DUMP))
            except OSError:
                pass
        deadline = time.monotonic() + 2.0
        for w in list(self._workers.values()):
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()
        self._workers.clear()
        return []

    # --- messaging ------------------------------------------------------------------------
    def _send(self, w: _Worker, kind: str, body: Any, data: bytes | None = None, startup: bool = False) -> bool:
        data = pickle.dumps((kind, body), _DUMP) if data is None else data
        try:
            w.conn.send_bytes(data)
        except OSError:
            self._lost(w, "pipe closed")
            return False
        self.traffic.sent[kind] += len(data)
        self.traffic.messages += 1
        if startup:
            self.traffic.startup += len(data)
        return True

    def _recv(self, w: _Worker) -> tuple[str, Any] | None:
        try:
            data = w.conn.recv_bytes()
        except (EOFError, OSError):
            self._lost(w, "pipe closed")
            return None
        kind, body = pickle.loads(data)
        self.traffic.received[kind] += len(data)
        self.traffic.messages += 1
        if kind == "error":
            raise WorkerError(f"worker {w.wid} failed:\n{body}")
        return kind, body

    def _lost(self, w: _Worker, why: str) -> None:
        if w.wid not in self._workers:
            return
        del self._workers[w.wid]
        w.proc.join(0.5)
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join()
        w.conn.close()
        self._dead.append(w.wid)
        if w.task is not None:
            self._orphans.append(w.task)
        self.events.append({"event": "worker_died", "worker": w.wid, "exitcode": w.proc.exitcode, "why": why,
                            "requeued_task": None if w.task is None else repr(w.task[1])})

    def _replace_dead(self) -> None:
        if not self._dead:
            return
        assert self._state_fn is not None
        state = self._state_fn()
        while self._dead:
            old = self._dead.pop()
            if self._restarts >= self.max_restarts:
                if not self._workers:
                    raise WorkerError(f"all workers died and the restart limit ({self.max_restarts}) is spent")
                continue
            self._restarts += 1
            w = self._spawn(state)
            self.events.append({"event": "worker_replaced", "worker": old, "replacement": w.wid})

    # --- the interface ----------------------------------------------------------------------
    def run(self, tasks: Sequence[Any]) -> list[Any]:
        self._replace_dead()
        queue: deque[tuple[int, Any]] = deque(enumerate(tasks))
        results: list[Any] = [None] * len(tasks)
        remaining = len(tasks)
        while remaining:
            for w in list(self._workers.values()):
                if w.task is None and queue:
                    w.task = queue.popleft()
                    self._send(w, "task", w.task)  # on failure _lost() has put it back among the orphans
            while self._orphans:
                queue.appendleft(self._orphans.pop())
            if not self._workers:
                self._replace_dead()
                continue
            busy = {w.conn: w for w in self._workers.values() if w.task is not None}
            sentinels = {w.proc.sentinel: w for w in self._workers.values()}
            for ready in wait([*busy, *sentinels], timeout=1.0):
                if ready in busy:
                    w = busy[ready]
                    if w.wid not in self._workers:
                        continue
                    msg = self._recv(w)
                    if msg is None:
                        continue
                    tid, result, compute_s = msg[1]
                    results[tid] = result
                    self.traffic.compute_s += compute_s
                    w.task = None
                    remaining -= 1
                else:
                    w = sentinels[ready]
                    if w.wid in self._workers:
                        self._lost(w, "process exited")
            if self._dead and (queue or self._orphans):
                self._replace_dead()
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise WorkerError(f"tasks {missing} returned no result")
        return results

    def broadcast(self, message: Any) -> None:
        data = pickle.dumps(("apply", message), _DUMP)
        for w in list(self._workers.values()):
            self._send(w, "apply", None, data)

    def verify(self, digest: str) -> list[int]:
        self._replace_dead()
        asked = [w for w in list(self._workers.values()) if self._send(w, "digest", None)]
        wrong = []
        for w in asked:
            msg = self._recv(w)
            if msg is not None and msg[1] != digest:
                wrong.append(w.wid)
        if wrong:
            assert self._state_fn is not None
            state = self._state_fn()
            for wid in wrong:
                if wid in self._workers:
                    self._send(self._workers[wid], "state", state)
                    self.events.append({"event": "resync", "worker": wid})
        return wrong

    # --- free-running workers ---------------------------------------------------------------
    def poll(self, timeout: float) -> list[Any]:
        """Reports that arrived within `timeout` seconds; handles deaths and worker errors."""
        owners: dict[Any, tuple[int, Any]] = {w.conn: (wid, w.proc) for wid, w in self._workers.items()}
        owners.update({w.proc.sentinel: (wid, w.proc) for wid, w in self._workers.items()})
        reports = []
        for ready in wait(list(owners), timeout=timeout):
            wid, owner = owners[ready]
            if wid not in self._workers or self._workers[wid].proc is not owner:
                continue  # that worker already died and was replaced within this batch
            conn = self._workers[wid].conn
            if ready is conn:
                try:
                    data = conn.recv_bytes()
                except (EOFError, OSError):
                    self._died_free(wid)
                    continue
                kind, _, *body = pickle.loads(data)
                if kind in ("done", "paused"):
                    count_report(self, len(data))
                    if kind == "paused":
                        self._acked.add(wid)
                    continue
                if kind == "report":
                    reports.extend(take_report(self, body[0], body[1], body[2], len(data)))
                else:
                    raise WorkerFailure(body[0], nonfinite=(kind == "nonfinite"))
            else:
                self._died_free(wid)
        return reports

    def pause(self) -> None:
        """From now on no worker begins an update (one in progress may finish); returns at once."""
        self._acked = set()
        self._pause.set()

    def settle(self, timeout: float = 10.0) -> list[Any]:
        """After `pause`: wait until every live worker has finished its update in hand and sent what it
        did (its "paused" message follows its last report); those reports. Then the store holds exactly
        the updates the coordinator has counted."""
        reports: list[Any] = []
        deadline = time.monotonic() + timeout
        while set(self._workers) - self._acked and time.monotonic() < deadline:
            reports.extend(self.poll(0.01))
        return reports

    def resume(self) -> None:
        self._pause.clear()

    def _died_free(self, wid: int) -> None:
        w = self._workers.pop(wid)
        w.proc.join(1)
        w.conn.close()
        event: dict[str, Any] = {"event": "worker_died", "worker": wid, "exitcode": w.proc.exitcode}
        if self._restarts < self.max_restarts:
            self._restarts += 1
            event["replacement_slot"] = self._spawn_free(wid)
        self.events.append(event)
        if not self._workers:
            raise WorkerFailure("all workers died and the restart limit is spent")

    def _close_free(self) -> list[Any]:
        self._stop.set()
        reports: list[Any] = []
        deadline = time.monotonic() + 5
        for w in list(self._workers.values()):
            proc, conn = w.proc, w.conn
            while time.monotonic() < deadline and conn.poll(max(0.0, deadline - time.monotonic())):
                try:
                    data = conn.recv_bytes()
                except (EOFError, OSError):
                    break
                kind, _, *body = pickle.loads(data)
                if kind == "done":
                    count_report(self, len(data))
                    break
                if kind == "report":
                    reports.extend(take_report(self, body[0], body[1], body[2], len(data)))
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
        self._workers.clear()
        return reports
