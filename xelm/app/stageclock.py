"""Wall seconds per stage of a long command, kept in its summary: where the time budget goes."""

from __future__ import annotations

import time
from contextlib import contextmanager


class StageClock:
    """Wall seconds per named stage (a stage entered twice adds up), and a table of them."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @classmethod
    def of(cls, seconds: dict[str, float]) -> StageClock:
        """A clock holding seconds already measured (to print their table)."""
        clock = cls()
        clock.seconds = dict(seconds)
        return clock

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 1)

    def table(self, indent: str = "      ") -> str:
        total = sum(self.seconds.values()) or 1.0
        rows = [f"{indent}{name:<26}{s:>8.1f} s {s / total:>6.1%}" for name, s in self.seconds.items()]
        return "\n".join([f"{indent}{'stage':<26}{'time':>10} {'share':>6}", *rows,
                          f"{indent}{'total':<26}{total:>8.1f} s"])
