"""Progress of long loops: a tqdm bar on a terminal, the same numbers as log lines otherwise.

Evaluation, MindRecord conversion, PCB prototype extraction and ``infer.py`` run for minutes to hours; a user
must see that they advance and when they will end. On a terminal (``sys.stderr.isatty()``) :func:`track` shows
a tqdm bar with the item rate and ETA; in a log file or a pipe (msrun worker logs, CI) it logs
``<desc>: <done>/<total> <unit> (<pct>%), <rate> <unit>/s, ETA <h:mm:ss>`` at most every ``interval_s``
seconds and once at the end, through the ``detzoo`` logger.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Iterable, Iterator, Optional, TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOG_INTERVAL_S = 30.0


def _eta(seconds: float) -> str:
    return tqdm.format_interval(max(0.0, seconds))


def track(items: Iterable[T], total: Optional[int], desc: str, unit: str = "img",
          count: Callable[[T], int] = lambda _: 1, interval_s: float = LOG_INTERVAL_S,
          logger: Optional[logging.Logger] = None, use_bar: Optional[bool] = None) -> Iterator[T]:
    """Yield ``items`` unchanged while reporting progress.

    Args:
        items: any iterable.
        total: expected number of units (images, records...); None when unknown (no percentage or ETA).
        desc: what is being done, e.g. "evaluating val2017".
        unit: name of one unit, e.g. "img".
        count: units in one item (e.g. the images of a batch); 1 by default.
        interval_s: least seconds between two log lines (log mode only).
        logger: where log lines go (default: the ``detzoo`` logger).
        use_bar: force the tqdm bar (True) or log lines (False); default: bar when stderr is a terminal.
    """
    if use_bar if use_bar is not None else sys.stderr.isatty():
        with tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True) as bar:
            for item in items:
                yield item
                bar.update(count(item))
        return
    log = logger or logging.getLogger("detzoo")
    start = last = time.perf_counter()
    done = 0
    log.info("%s: started, %s %s", desc, "?" if total is None else total, unit)
    for item in items:
        yield item
        done += count(item)
        now = time.perf_counter()
        if now - last >= interval_s:
            last = now
            log.info("%s", _line(desc, done, total, unit, now - start))
    log.info("%s", _line(desc, done, total, unit, time.perf_counter() - start) + " (done)")


def _line(desc: str, done: int, total: Optional[int], unit: str, elapsed: float) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    if total:
        eta = _eta((total - done) / rate) if rate > 0 else "?"
        return f"{desc}: {done}/{total} {unit} ({100.0 * done / total:.0f}%), {rate:.2f} {unit}/s, ETA {eta}"
    return f"{desc}: {done} {unit}, {rate:.2f} {unit}/s, elapsed {_eta(elapsed)}"
