"""The stage clock: where a long command's time goes, as the demo and the evaluation report it."""

from __future__ import annotations

import time

from xelm.app.stageclock import StageClock


def test_a_stage_entered_twice_adds_up_and_the_table_shows_shares():
    clock = StageClock()
    for _ in range(2):
        with clock.stage("a"):
            time.sleep(0.06)
    try:
        with clock.stage("b"):
            raise ValueError
    except ValueError:
        pass  # a stage that fails still counts its time
    assert list(clock.seconds) == ["a", "b"] and clock.seconds["a"] >= 0.1 and clock.seconds["b"] < 0.1
    table = StageClock.of({"a": 3.0, "b": 1.0}).table(indent="")
    assert "75.0%" in table and "25.0%" in table and table.splitlines()[-1].split()[-2] == "4.0"
