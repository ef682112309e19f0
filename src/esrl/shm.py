"""Cross-process primitives that survive a worker killed while holding them.

A multiprocessing.Lock held by a process that is SIGKILLed stays held forever, and every
other worker (and the coordinator) then blocks. `ProcessLock` is an flock on a temp file:
the kernel releases it when its holder dies. `Counter` and `Flag` build on it and on raw
shared memory; `hold` is how a worker waits out a paused run.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
import time
from typing import Any


class ProcessLock:
    """Exclusive lock across processes (and threads of one process); released if the holder dies.

    The lock file is unlinked as soon as it is made, so nothing is left behind whatever
    happens; each process reopens it through /proc/self/fd (its own open file description,
    which is what flock locks) from the descriptor it inherited at fork.
    """

    def __init__(self) -> None:
        fd, path = tempfile.mkstemp(prefix="esrl-lock-")
        self._base = fd
        self._path: str | None = path
        if os.path.isdir("/proc/self/fd"):
            os.unlink(path)
            self._path = None
        self._creator = os.getpid()
        self._fd, self._pid = -1, -1
        self._thread_lock = threading.Lock()
        self._setup_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # spawn (no /proc): the child reopens the file by path
        if self._path is None:
            raise TypeError("a ProcessLock travels to a child by fork on Linux, not by pickling")
        return {"_path": self._path, "_base": -1, "_creator": self._creator}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fd, self._pid = -1, -1
        self._thread_lock = threading.Lock()
        self._setup_lock = threading.Lock()

    def _handle(self) -> int:
        if self._pid != os.getpid():
            with self._setup_lock:
                if self._pid != os.getpid():  # flock belongs to an open file: each process opens its own
                    src = f"/proc/self/fd/{self._base}" if self._path is None else self._path
                    self._fd = os.open(src, os.O_RDWR)
                    self._thread_lock = threading.Lock()
                    self._pid = os.getpid()
        return self._fd

    def __enter__(self) -> ProcessLock:
        fd = self._handle()
        self._thread_lock.acquire()
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._held = fd
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._held, fcntl.LOCK_UN)
        self._thread_lock.release()

    def __del__(self) -> None:
        if getattr(self, "_creator", None) == os.getpid() and getattr(self, "_path", None):
            try:
                os.unlink(self._path)  # type: ignore[arg-type]
            except OSError:
                pass


class Counter:
    """A shared int64 that increments atomically under a ProcessLock."""

    def __init__(self, ctx: Any, value: int = 0) -> None:
        self._raw = ctx.RawValue("q", value)
        self._lock = ProcessLock()

    @property
    def value(self) -> int:
        return int(self._raw.value)

    @value.setter
    def value(self, v: int) -> None:
        with self._lock:
            self._raw.value = int(v)

    def add(self, n: int = 1) -> int:
        """Add n; returns the new value."""
        with self._lock:
            self._raw.value += n
            return int(self._raw.value)


class Flag:
    """A shared boolean (a raw byte: setting and reading it takes no lock)."""

    def __init__(self, ctx: Any) -> None:
        self._raw = ctx.RawValue("b", 0)

    def set(self) -> None:
        self._raw.value = 1

    def clear(self) -> None:
        self._raw.value = 0

    def is_set(self) -> bool:
        return bool(self._raw.value)


PAUSE_NAP_S = 0.002  # how often a paused worker looks at its flags again: a short nap, no lock, no syscall but sleep


def hold(pause: Flag, stop: Flag) -> bool:
    """Wait while `pause` is set (a worker between two updates); False once `stop` is set."""
    while pause.is_set() and not stop.is_set():
        time.sleep(PAUSE_NAP_S)
    return not stop.is_set()


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when the process that forked it dies.

    Workers hold the coordinator's pipe ends too, so they would never see it go; without
    this a SIGKILLed coordinator would leave them running (or blocked) forever.
    """
    import ctypes
    import multiprocessing
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except OSError:
        return
    # The request only covers a parent that dies from now on: one that died between the fork and
    # the prctl (a SIGKILL while this child was still starting) has already handed it to init.
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)
