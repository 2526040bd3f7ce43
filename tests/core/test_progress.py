"""Progress reports: a redrawn line on a terminal, log lines elsewhere, nothing when disabled."""

import io
import logging

from core.progress import Progress, format_seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rate_and_time_left_are_computed_from_the_clock():
    clock = FakeClock()
    progress = Progress("epoch 1", 100, stream=io.StringIO(), clock=clock)
    clock.now += 5.0
    progress.update(40)
    # 40 steps in 5 s: 8 steps/s, 60 left take 7.5 s (shown rounded to 0:08).
    assert progress.status() == "epoch 1 40/100 step, 8.0 step/s, 0:08 left"
    assert format_seconds(73) == "1:13" and format_seconds(3723) == "1:02:03"
    unknown = Progress("scan", None, unit="row", stream=io.StringIO(), clock=clock)
    clock.now += 2.0
    unknown.update(3)
    assert unknown.status() == "scan 3 row, 1.5 row/s"


def test_off_a_terminal_it_logs_at_intervals(caplog):
    clock = FakeClock()
    stream = io.StringIO()
    progress = Progress("candidates", 10, unit="example", stream=stream, clock=clock)
    with caplog.at_level(logging.INFO, logger="core.progress"), progress:
        for _ in range(10):
            clock.now += 4.0
            progress.update()
    # Every 15 s of the 40: at 16 s and 32 s, then the end.
    assert [r.getMessage() for r in caplog.records] == [
        "candidates 4/10 example, 0.2 example/s, 0:24 left",
        "candidates 8/10 example, 0.2 example/s, 0:08 left",
        "candidates 10/10 example, 0.2 example/s, done in 0:40",
    ]
    assert stream.getvalue() == ""


def test_on_a_terminal_it_redraws_one_line_and_quiet_shows_nothing(caplog):
    clock = FakeClock()
    terminal = Terminal()
    with caplog.at_level(logging.INFO, logger="core.progress"):
        with Progress("epoch 2", 3, stream=terminal, clock=clock) as progress:
            for _ in range(3):
                clock.now += 1.0
                progress.update()
        quiet = Progress("epoch 3", 3, enabled=False, stream=terminal, clock=clock)
        quiet.update(3)
        quiet.close()
    assert caplog.records == []
    lines = terminal.getvalue().split("\r\x1b[2K")[1:]
    assert lines == [
        "epoch 2 1/3 step, 1.0 step/s, 0:02 left",
        "epoch 2 2/3 step, 1.0 step/s, 0:01 left",
        "epoch 2 3/3 step, 1.0 step/s",
        "epoch 2 3/3 step, 1.0 step/s, done in 0:03\n",
    ]
