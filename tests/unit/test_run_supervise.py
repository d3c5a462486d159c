"""`earful run` keeps its worker and connectors running, and stops when one keeps failing."""

from __future__ import annotations

import threading

from streams.commands.pipeline import MAX_RESTARTS, supervise


class Child:
    """A process stand-in: exits with ``code`` after ``lives`` polls (never, if None)."""

    def __init__(self, lives: int | None, code: int = 1) -> None:
        self.lives, self.code, self.signals = lives, code, []

    def poll(self) -> int | None:
        if self.lives is None:
            return None
        self.lives -= 1
        return self.code if self.lives < 0 else None

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        self.lives = 0

    def wait(self, timeout: float | None = None) -> int:
        return self.code

    def kill(self) -> None:
        pass


def _run(plan: dict[str, list[Child]], stop_after: int) -> tuple[str | None, list[str], dict[str, list[Child]]]:
    started: dict[str, list[Child]] = {name: [] for name in plan}
    said: list[str] = []
    stop = threading.Event()
    ticks = iter(range(10_000))

    def begin(name: str) -> Child:
        child = plan[name].pop(0)
        started[name].append(child)
        return child

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()

    def wait(_seconds: float) -> bool:
        clock.now += 1.0
        if next(ticks) >= stop_after:
            stop.set()
        return stop.is_set()

    stop.wait = wait  # type: ignore[method-assign]
    failed = supervise({name: (lambda name=name: begin(name)) for name in plan}, stop, echo=said.append, clock=clock)
    return failed, said, started


def test_a_worker_that_exits_is_started_again_and_all_are_stopped_at_the_end() -> None:
    failed, said, started = _run({"worker": [Child(lives=2), Child(lives=None)],
                                  "connect": [Child(lives=None)]}, stop_after=10)
    assert failed is None
    assert said == ["the worker exited (code 1): starting it again"]
    assert len(started["worker"]) == 2 and len(started["connect"]) == 1
    assert started["worker"][1].signals and started["connect"][0].signals  # stopped at the end


def test_a_process_that_keeps_exiting_stops_everything_and_is_named() -> None:
    failed, said, started = _run({"worker": [Child(lives=None)],
                                  "connect": [Child(lives=0, code=1) for _ in range(MAX_RESTARTS)]}, stop_after=100)
    assert failed == "connect"
    assert said[-1] == f"the connect exited (code 1) {MAX_RESTARTS} times within a minute: stopping everything"
    assert started["worker"][0].signals  # the worker was stopped too


def test_a_process_that_finishes_is_not_started_again_and_the_others_run_on() -> None:
    failed, said, started = _run({"worker": [Child(lives=None)], "connect": [Child(lives=1, code=0)]},
                                 stop_after=20)
    assert failed is None and said == ["the connect finished"]
    assert len(started["connect"]) == 1 and started["worker"][0].signals  # ran until stopped


def test_the_run_ends_when_every_process_has_finished() -> None:
    failed, said, _ = _run({"worker": [Child(lives=2, code=0)], "connect": [Child(lives=0, code=0)]},
                           stop_after=10_000)
    assert failed is None and sorted(said) == ["the connect finished", "the worker finished"]
