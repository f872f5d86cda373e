"""The clocks the speed benchmarks read around each timed call (`peers.py`, `patchknn_speed.py`).

CPU time is split into user and system: torch's eager models spend much of theirs in page faults
for fresh activation buffers, as often as the allocator's state (what ran before in the process)
lets them, so the system part moves a yardstick's cost while the user part, the arithmetic,
moves far less (docs/measurements.md).
"""

from __future__ import annotations

import resource
import time


def clocks() -> tuple[float, float, float, float]:
    """(CPU, wall, user, system) seconds of this process so far; subtract two readings."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return time.process_time(), time.perf_counter(), ru.ru_utime, ru.ru_stime
