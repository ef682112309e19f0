"""Live progress on stderr: a redrawn line on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text


class Progress:
    """Shows iteration, returns, steps/s and the time left in the budget."""

    def __init__(self, enabled: bool = True, every_s: float = 2.0) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.every_s = every_s
        self._last = 0.0
        self._live: Live | None = None
        if enabled and self.tty:
            # auto_refresh=False: no background thread, so forking workers later stays safe
            self._live = Live(Text(""), console=Console(stderr=True), auto_refresh=False, transient=False)
            self._live.start()

    def update(self, m: dict[str, Any], budget_s: float, max_iterations: int) -> None:
        if not self.enabled:
            return
        eta = []
        if budget_s:
            eta.append(f"{max(0.0, budget_s - m['wall_s']):.0f}s left")
        if max_iterations:
            eta.append(f"{max(0, max_iterations - m['iteration'] - 1)} it left")
        ev = m.get("eval_return")
        line = (
            f"it {m['iteration']}  {m['wall_s']:.1f}s  return {_num(m['return_mean'])} "
            f"(max {_num(m['return_max'])})  eval {_num(ev)}  {m['steps_per_s'] / 1e3:.0f}k steps/s  "
            f"{m['live_workers']}w  {' '.join(eta)}"
        )
        if self._live is not None:
            self._live.update(Text(line), refresh=True)
        elif time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"
