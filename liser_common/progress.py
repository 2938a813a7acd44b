"""Progress a person can read: a tqdm bar (rate, ETA) on a terminal, plain periodic log lines
otherwise (a log file, CI, a pipe), nothing in between.

The CLI turns bars on (:func:`configure`) when its console shows INFO and stderr is a terminal;
library use logs a line every ``every`` seconds on the ``liser.progress`` logger, so a long
labeling pass in a notebook or a log file still says how far it is and how long it will take.

Example::

    >>> for batch in progress(loader, total=len(loader), desc="label fer", unit="batch"):  # doctest: +SKIP
    ...     ...
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger("liser.progress")
T = TypeVar("T")

_BARS = False
EVERY_S = 30.0


def configure(*, bars: bool) -> None:
    """Show tqdm bars (True: the CLI on a terminal) or periodic lines (False)."""
    global _BARS
    _BARS = bool(bars)


def bars_wanted(level: int) -> bool:
    """Whether a console at ``level`` on this stderr should get bars."""
    return level <= logging.INFO and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def progress(
    iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it", every: float | None = None
) -> Iterator[T]:
    """``iterable``, reporting progress: a bar when bars are on, else a log line every
    ``every`` seconds (default :data:`EVERY_S`) with the count, rate and time left."""
    if _BARS:
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm comes with transformers and huggingface_hub
            pass
        else:
            yield from tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr)
            return
    every = EVERY_S if every is None else every
    start = last = time.perf_counter()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= every:
            last = now
            log.info("%s", line(desc, done, total, now - start, unit))


def line(desc: str, done: int, total: int | None, seconds: float, unit: str) -> str:
    """``"label fer: 120/435 batch (28%), 4.0 batch/s, 1:19 left"``."""
    rate = done / seconds if seconds > 0 else 0.0
    if total:
        left = (total - done) / rate if rate > 0 else float("nan")
        eta = "?" if left != left else f"{int(left // 60)}:{int(left % 60):02d}"
        return f"{desc}: {done}/{total} {unit} ({100 * done / total:.0f}%), {rate:.1f} {unit}/s, {eta} left"
    return f"{desc}: {done} {unit}, {rate:.1f} {unit}/s"
