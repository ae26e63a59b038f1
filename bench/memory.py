"""Process memory figures for the benchmarks: current resident set and its peak, in MB (Linux)."""

from __future__ import annotations

import resource


def rss_mb() -> float:
    """Resident set size now (``VmRSS`` of /proc/self/status)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mb() -> float:
    """Peak resident set size of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
