"""How many threads torch uses for CPU work when the command line runs: the cores other work leaves idle.

torch's default is one thread per core, whatever else runs. Every parallel op then waits for its slowest
thread, and on cores that other work keeps busy that thread waits for a time slice: the demo model's small ops
run several times slower than on one thread. So the command line counts the cores this process may run on,
takes away the 1-minute load average (about how many of them other work keeps busy) and uses the rest, at
least one. A user's own choice wins: `flexip --threads N`, or OMP_NUM_THREADS / MKL_NUM_THREADS.

Torch-free, so that the command line decides before torch is imported.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, MutableMapping

from ..errors import FlexIPError

# The variables torch reads its thread count from when it is imported (MKL's wins over OpenMP's).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def idle_cores(cores: int, load: float) -> int:
    """The cores a load average leaves idle, to the nearest whole core, and at least one."""
    return max(1, math.floor(cores - load + 0.5))


def chosen_threads(flag: int | None, environ: Mapping[str, str], cores: int, load: float) -> int | None:
    """The thread count to set: the flag's; none where the environment names one (torch reads it itself);
    otherwise the idle cores."""
    if flag is not None:
        if flag < 1:
            raise FlexIPError(f"--threads {flag}: give a whole number of threads, at least 1")
        return flag
    if any(environ.get(name) for name in THREAD_VARIABLES):
        return None
    return idle_cores(cores, load)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> float:
    """The 1-minute load average; 0 where the system keeps none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def set_threads(threads: int, environ: MutableMapping[str, str] = os.environ) -> None:
    """Gives torch `threads` threads: directly when it is already imported (a caller in the same process),
    otherwise through the variables it reads when it is imported."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    else:
        for name in THREAD_VARIABLES:
            environ[name] = str(threads)


def apply_thread_policy(flag: int | None) -> None:
    """The command line's thread count for this run: the flag's, the environment's, or the idle cores."""
    threads = chosen_threads(flag, os.environ, usable_cores(), load_average())
    if threads is not None:
        set_threads(threads)
