"""This process's resident memory: the one reader of the trainer's metrics and the benchmarks."""

from __future__ import annotations

import contextlib
import resource
from typing import NamedTuple


class RSS(NamedTuple):
    current_mib: float
    peak_mib: float
    peak_reset: bool  # the peak was reset to the current RSS first (asked for, and possible here)


def rss(reset_peak: bool = False) -> RSS:
    """This process's resident memory in MiB, from /proc/self/status (elsewhere only the peak, from
    getrusage). ``reset_peak`` first resets the peak (VmHWM) to the current RSS (Linux >= 4.0), so
    that a later reading's peak covers only what ran in between."""
    reset = False
    if reset_peak:
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
            f.write("5")
            reset = True
    cur = peak = float("nan")
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return RSS(cur, peak, reset)


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB."""
    return rss().peak_mib
