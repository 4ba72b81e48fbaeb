"""Test doubles shared by several test modules."""

from __future__ import annotations


class Clock:
    """A monotonic clock that moves only when the code under test sleeps (``sleep`` advances it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
