"""Measurement helpers shared by the benchmark scripts: memory of this process, step timing, and one
measurement per child process (so each peak-memory figure belongs to one model alone).

Protocol: a benchmark module run with ``--worker NAME ...`` measures one thing and prints one line
``RESULT {json}``; :func:`measure_in_subprocess` starts it and returns the parsed dict.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Callable, Sequence


def rss_mb() -> float:
    """Resident set size of this process now, in MiB (NaN where /proc is missing)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    """High-water mark of this process's resident set size, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(step: Callable[[], object], warmup: int, iters: int) -> tuple[float, float]:
    """Seconds spent in ``warmup`` untimed calls (compilation included) and mean seconds per timed call."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return warm, (time.perf_counter() - start) / iters


def print_result(result: dict) -> None:
    """The worker side of the protocol: one ``RESULT {json}`` line on stdout."""
    print("RESULT " + json.dumps(result), flush=True)


def measure_in_subprocess(module: str, worker: str, options: Sequence[str]) -> dict:
    """Run ``python -m module --worker worker *options`` and return the dict it printed.

    Raises:
        RuntimeError: the child failed or printed no ``RESULT`` line (its stderr tail is included).
    """
    cmd = [sys.executable, "-m", module, "--worker", worker, *map(str, options)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{worker} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])
