"""Progress of the steps that run for minutes (fit: members x inner folds; recover: rows; cv: folds x methods;
train: updates; the regressor's encoder: texts). Library code reports with `Steps`; a display installed with
`showing` (the CLI's Rich bars) draws it, and without one nothing is shown or computed."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

Display = Callable[[str, int, "int | None", str], None]  # (task, done, total or None when unknown, detail)
_display: Display | None = None


def active() -> bool:
    """True while a display is installed (so a caller may spend a little to know a total, e.g. count rows)."""
    return _display is not None


@contextmanager
def showing(display: Display) -> Iterator[None]:
    """Send every report inside the block to `display`."""
    global _display
    before, _display = _display, display
    try:
        yield
    finally:
        _display = before


class Steps:
    """`total` units of one task, reported as they are done; a task restarts at 0 when a new `Steps` opens it."""

    def __init__(self, task: str, total: int | None, detail: str = ""):
        self.task, self.total, self.done, self.detail = task, total, 0, detail
        self.advance(0)

    def advance(self, units: int = 1, detail: str = "") -> None:
        """Count `units` more done; `detail` says what runs now (e.g. "gate fold 2/6 regressor"; blank: as before)."""
        self.done += units
        self.detail = detail or self.detail
        if _display is not None:
            _display(self.task, self.done, self.total, self.detail)
