"""How many CPU threads a run uses: the cores that are free when it starts, unless told.

Intra-op parallelism splits every operation across threads that meet at a barrier after it. When another process
holds one of the cores, the thread scheduled there waits for it at every barrier, and a step that should take the
time of half its work takes the time of the whole work plus the waits. On a 2-core machine with a busy neighbour the
MNIST PixelCNN trained 2 to 3 times slower on two threads than on one. So a run takes as many threads as there are
cores with nothing runnable on them at its start (counted from the kernel's count of runnable tasks, sampled a few
times), at least one; ``--threads N`` or ``OMP_NUM_THREADS`` choose instead.
"""

from __future__ import annotations

import os
import statistics
import time


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def busy_cores(samples: int = 5, interval: float = 0.05) -> int:
    """Runnable tasks other than this one, the median of a few readings of ``/proc/loadavg`` (0 where it is
    missing)."""
    readings = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        readings.append(running - 1)  # this process is one of them
        if i + 1 < samples:
            time.sleep(interval)
    return max(0, round(statistics.median(readings)))


def choose_threads(requested: int | None) -> tuple[int, str]:
    """The thread count for a run and why: ``requested``, else ``OMP_NUM_THREADS``, else the free cores."""
    cores = usable_cores()
    if requested is not None:
        return requested, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    busy = busy_cores()
    return max(1, cores - busy), f"{cores} cores, {busy} busy at the start; --threads N to choose"
