"""Local worker processes over pipes: the embedded default.

No multiprocessing.Pool (it hangs when a worker dies). Each worker is a Process with its
own duplex pipe; the coordinator waits on the pipes and on the process sentinels together,
so a death is seen at once: the dead worker's task goes back in the queue, a replacement
is started with a full state sync, and the event is logged. Every message is pickled here
(between our own processes only) and its length counted by kind; the full state a new
worker gets (and, under `spawn`, the setup its process is started with) is start-up traffic.
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

from esrl.backends.base import Traffic
from esrl.shm import die_with_parent

_DUMP = pickle.HIGHEST_PROTOCOL


def _worker_main(conn: Connection, setup: Any) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
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


class WorkerError(RuntimeError):
    """A worker raised: the traceback is carried in the message."""


class _Worker:
    def __init__(self, wid: int, proc: Any, conn: Connection) -> None:
        self.wid, self.proc, self.conn = wid, proc, conn
        self.task: tuple[int, Any] | None = None


class ProcessBackend:
    """N worker processes, each with a replica; see the module docstring."""

    transport = "pipe"

    def __init__(self, workers: int, max_restarts: int | None = None, start_method: str | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.n = workers
        self.max_restarts = 3 * workers if max_restarts is None else max_restarts
        method = start_method or ("fork" if sys.platform.startswith("linux") else "spawn")
        self._ctx: Any = mp.get_context(method)
        self.traffic = Traffic()
        self.events: list[dict[str, Any]] = []
        self._workers: dict[int, _Worker] = {}
        self._next_id = 0
        self._restarts = 0
        self._dead: list[int] = []
        self._orphans: list[tuple[int, Any]] = []  # tasks whose worker died before answering
        self._setup: Any = None
        self._state_fn: Callable[[], dict[str, Any]] | None = None
        self._setup_bytes = 0

    @property
    def live_workers(self) -> int:
        return len(self._workers)

    # --- lifecycle ------------------------------------------------------------------------
    def start(self, setup: Any, state_fn: Callable[[], dict[str, Any]]) -> None:
        self._setup, self._state_fn = setup, state_fn
        if self._ctx.get_start_method() != "fork":  # a forked worker inherits the setup; a spawned one is sent it
            self._setup_bytes = len(pickle.dumps(setup, _DUMP))
        state = state_fn()
        for _ in range(self.n):
            self._spawn(state)

    def _spawn(self, state: dict[str, Any]) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child, self._setup), daemon=True)
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

    def close(self) -> None:
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
