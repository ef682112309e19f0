"""Ctrl-C and SIGTERM stop a training loop at an iteration boundary, never inside an update.

Inside `deferred()`, the signals only set a flag; the loop checks `requested()` between
iterations, so the state it checkpoints is always one a completed iteration left.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_flag = threading.Event()


def requested() -> bool:
    return _flag.is_set()


@contextmanager
def deferred() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _flag.clear()
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: object) -> None:
        if _flag.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        _flag.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for signum, h in previous.items():
            signal.signal(signum, h)
