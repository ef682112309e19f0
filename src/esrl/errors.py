"""Error types every layer may raise or catch: `InputError`, which the command line turns into a one-line
message and exit code 2, and `NonFiniteError`, which pools (backends) report as a "nonfinite" stop."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: names the offending field and what is accepted."""

    def __init__(self, field: str, problem: str, accepted: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.accepted = accepted
        msg = f"{field}: {problem}"
        if accepted:
            msg += f" (accepted: {accepted})"
        super().__init__(msg)


class NonFiniteError(RuntimeError):
    """A loss, gradient or reward that is NaN or infinite; names the worker and update."""
