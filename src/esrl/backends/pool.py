"""Worker pools for the asynchronous algorithms (A3C, DQN, Dyna-Q): processes or serial.

A pool runs `setup.build_worker(index, client)` objects whose `step()` does one update and
returns a report. The processes pool runs each worker in its own process until told to
stop, sending its reports (and the bytes and messages its store client counted) every
REPORT_S seconds; it notices a dead worker through its sentinel, logs it, and starts a
replacement on a spare store slot. The serial pool steps the workers round-robin in this
process, so a run is reproducible exactly.

Traffic: every pull and push a store client makes is a message (see `esrl.stores`), and so
is every report a worker sends the coordinator (kind "report", received). `pause()` stops
workers from beginning updates (the coordinator evaluates meanwhile); `resume()` lets them go on.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any

from esrl.backends.base import Traffic
from esrl.errors import NonFiniteError
from esrl.shm import Flag, die_with_parent, hold

REPORT_S = 0.1


def _absorb(traffic: Traffic, client: Any) -> None:
    """Move a store client's counts into `traffic` (and zero them: reports carry deltas)."""
    for k, v in client.sent.items():
        traffic.sent[k] += v
    for k, v in client.received.items():
        traffic.received[k] += v
    client.sent.clear()
    client.received.clear()
    traffic.messages += getattr(client, "messages", 0)  # a client of a test may count bytes only
    if hasattr(client, "messages"):
        client.messages = 0


def _clients(worker: Any, client: Any) -> list[Any]:
    """The worker's store clients: the main one first, then any others (Dyna-Q's world model)."""
    return [client, *getattr(worker, "extra_clients", [])]


def _send_report(conn: Connection, wid: int, acc: Any, clients: list[Any], compute: float) -> None:
    traffic = Traffic()
    for c in clients:
        _absorb(traffic, c)
    staleness = clients[0].staleness
    for c in clients:
        c.staleness = []
    traffic.compute_s = compute
    conn.send_bytes(pickle.dumps(("report", wid, acc, traffic, staleness)))


def count_report(pool: Any, nbytes: int) -> None:
    """A message from a worker to the coordinator (a report, or the last word of a stopping worker)."""
    pool.traffic.received["report"] += nbytes
    pool.traffic.messages += 1


def take_report(pool: Any, rep: Any, traffic: Traffic, staleness: list[int], nbytes: int) -> list[Any]:
    """Fold a worker's report message (`nbytes` long) and the traffic it carries into a pool's counters."""
    pool.staleness.extend(staleness)
    pool.traffic.add(traffic)
    count_report(pool, nbytes)
    return [] if rep is None else [rep]


def _worker_main(setup: Any, wid: int, client: Any, conn: Connection, stop: Flag, pause: Flag) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import torch

    torch.set_num_threads(1)
    if hasattr(client, "on_start"):
        client.on_start()
    worker = None
    try:
        worker = setup.build_worker(wid, client)
        clients = _clients(worker, client)
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


class WorkerFailure(RuntimeError):
    """A worker raised (non-finite values included); carries the worker's own message."""

    def __init__(self, message: str, nonfinite: bool = False) -> None:
        super().__init__(message)
        self.nonfinite = nonfinite


class ProcessPool:
    """N worker processes driving a parameter store; see the module docstring.

    `transport` is the store's: "shared-memory" (lock, hogwild) or "pipe" (param-server),
    how parameters and gradients move; reports always travel over a pipe.
    """

    def __init__(self, setup: Any, store: Any, workers: int, ctx: Any, max_restarts: int) -> None:
        self.setup, self.store, self.n, self.ctx = setup, store, workers, ctx
        self.max_restarts = max_restarts
        self.transport: str = getattr(store, "transport", "pipe")
        self.traffic = Traffic()
        self.events: list[dict[str, Any]] = []
        self.staleness: list[int] = []
        self._stop = Flag(ctx)  # a raw byte: a worker killed mid-check cannot leave it locked
        self._pause = Flag(ctx)  # workers look at it before each update; replacements inherit it
        self._acked: set[int] = set()  # workers that acknowledged the current pause
        self._procs: dict[int, tuple[Any, Connection]] = {}
        self._next_slot = 0

    @staticmethod
    def slots_needed(workers: int, max_restarts: int) -> int:
        return workers + max_restarts

    @property
    def live_workers(self) -> int:
        return len(self._procs)

    def start(self) -> None:
        for index in range(self.n):
            self._spawn(index)

    def _spawn(self, index: int) -> int:
        """Start worker `index` (its role and seeds) on a fresh store slot; returns the slot."""
        slot = self._next_slot
        self._next_slot += 1
        parent, child = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_worker_main, args=(self.setup, index, self.store.client(slot), child,
                                                           self._stop, self._pause), daemon=True)
        proc.start()
        child.close()
        if hasattr(self.store, "release"):
            self.store.release(slot)
        self._procs[index] = (proc, parent)
        return slot

    def poll(self, timeout: float) -> list[Any]:
        """Reports that arrived within `timeout` seconds; handles deaths and worker errors."""
        owners: dict[Any, tuple[int, Any]] = {c: (wid, p) for wid, (p, c) in self._procs.items()}
        owners.update({p.sentinel: (wid, p) for wid, (p, _) in self._procs.items()})
        reports = []
        for ready in wait(list(owners), timeout=timeout):
            wid, owner = owners[ready]
            if wid not in self._procs or self._procs[wid][0] is not owner:
                continue  # that worker already died and was replaced within this batch
            _proc, conn = self._procs[wid]
            if ready is conn:
                try:
                    data = conn.recv_bytes()
                except (EOFError, OSError):
                    self._died(wid)
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
                self._died(wid)
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
        while set(self._procs) - self._acked and time.monotonic() < deadline:
            reports.extend(self.poll(0.01))
        return reports

    def resume(self) -> None:
        self._pause.clear()

    def _died(self, wid: int) -> None:
        proc, conn = self._procs.pop(wid)
        proc.join(1)
        conn.close()
        event: dict[str, Any] = {"event": "worker_died", "worker": wid, "exitcode": proc.exitcode}
        if self._next_slot - self.n < self.max_restarts:
            event["replacement_slot"] = self._spawn(wid)
        self.events.append(event)
        if not self._procs:
            raise WorkerFailure("all workers died and the restart limit is spent")

    def close(self) -> list[Any]:
        """Stop the workers; returns the reports they sent on the way out."""
        self._stop.set()
        reports: list[Any] = []
        deadline = time.monotonic() + 5
        for _wid, (proc, conn) in list(self._procs.items()):
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
        self._procs.clear()
        return reports


class SerialPool:
    """The workers in this process, one update each in turn: an exactly reproducible schedule.

    Its store clients still count each pull and push (copies within this process), so its
    messages per update match the processes pool's on a shared-memory store.
    """

    transport = "in-process"

    def __init__(self, setup: Any, store: Any, workers: int) -> None:
        self.setup, self.store, self.n = setup, store, workers
        self.traffic = Traffic()
        self.events: list[dict[str, Any]] = []
        self.staleness: list[int] = []
        self._workers: list[Any] = []
        self._clients: list[Any] = []
        self._paused = False

    @property
    def live_workers(self) -> int:
        return self.n

    def start(self) -> None:
        self._clients = [self.store.client(w) for w in range(self.n)]
        self._workers = [self.setup.build_worker(w, c) for w, c in zip(range(self.n), self._clients, strict=True)]

    def pause(self) -> None:
        """Nothing runs between polls here anyway; a poll while paused does nothing."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def settle(self, timeout: float = 10.0) -> list[Any]:
        """Nothing is in flight between rounds."""
        return []

    def poll(self, timeout: float) -> list[Any]:
        """One round: every worker does one update (none while paused)."""
        if self._paused:
            return []
        reports = []
        for w, c in zip(self._workers, self._clients, strict=True):
            t0 = time.perf_counter()
            try:
                reports.append(w.step())
            except Exception as exc:
                if isinstance(exc, NonFiniteError):
                    raise WorkerFailure(f"worker {w.wid}, update {w.updates}: {exc}", nonfinite=True) from None
                raise
            self.traffic.compute_s += time.perf_counter() - t0
            for k, client in enumerate(_clients(w, c)):
                _absorb(self.traffic, client)
                if k == 0:
                    self.staleness.extend(client.staleness)
                client.staleness = []
        return reports

    def close(self) -> list[Any]:
        self._workers = []
        return []


def context(start_method: str | None = None) -> Any:
    """fork on Linux (workers inherit imported torch and start in milliseconds), spawn elsewhere."""
    return mp.get_context(start_method or ("fork" if sys.platform.startswith("linux") else "spawn"))
