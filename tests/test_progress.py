"""Progress when the output is a file: plain lines as the task advances, not one bar at the very end."""

import io

from rich.console import Console

from rlhfkit.training.progress import line_due, progress_bar, progress_line


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_task(console: Console, enabled: bool = True, pauses: dict[int, float] | None = None) -> list[str]:
    """100 steps of a second each (or `pauses[step]` seconds); the printed lines."""
    clock = Clock()
    with progress_bar(enabled, console=console, every_s=60.0, get_time=clock) as bar:
        task = bar.add_task("train", total=100)
        for step in range(1, 101):
            clock.now += (pauses or {}).get(step, 1.0)
            bar.update(task, advance=1, description=f"train loss {1 / step:.3f}")
    return console.file.getvalue().splitlines()


def test_a_file_gets_a_line_per_tenth_and_after_a_silent_minute():
    lines = run_task(Console(file=io.StringIO(), force_terminal=False, force_interactive=False), pauses={25: 70.0})
    assert lines[0] == "train loss 0.100: 10/100 (10%), 0:00:10 elapsed, 0:01:30 left"
    counts = [line.split(": ")[1].split(" ")[0] for line in lines]
    assert counts == ["10/100", "20/100", "25/100", "30/100", *(f"{10 * k}/100" for k in range(4, 11))]
    assert lines[-1].startswith("train loss 0.010: 100/100 (100%), 0:02:49 elapsed")


def test_a_terminal_gets_the_bar_and_hidden_processes_nothing():
    terminal = run_task(Console(file=io.StringIO(), force_terminal=True, force_interactive=True))
    assert not any("(10%)" in line for line in terminal)  # rich draws the bar there
    assert run_task(Console(file=io.StringIO(), force_terminal=False), enabled=False) == []


def test_line_due():
    assert line_due(9, 10, 100, 1.0, 60.0)  # a tenth
    assert not line_due(10, 11, 100, 59.0, 60.0)
    assert line_due(10, 11, 100, 60.0, 60.0)  # a silent minute
    assert line_due(99.5, 100, 100, 0.0, 60.0)  # the end
    assert not line_due(10, 10, 100, 600.0, 60.0)  # no news
    assert line_due(3, 4, None, 61.0, 60.0) and not line_due(3, 4, None, 1.0, 60.0)  # no total: time only


def test_progress_line_without_total_or_estimate():
    assert progress_line("waiting", 3, None, 3725.0, None) == "waiting: 3, 1:02:05 elapsed, ? left"
