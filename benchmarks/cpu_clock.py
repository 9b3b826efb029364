"""Run a benchmark script with its step timer reading process CPU time instead of wall time.

    python benchmarks/cpu_clock.py SCRIPT [ARGS...]

`time.perf_counter` is replaced by `time.process_time` (CPU seconds of all the process's threads)
before SCRIPT runs, so the JSON line it prints reports CPU seconds per step wherever it said
seconds. On a machine shared with other jobs, the wall time of a step depends on how much of the
CPUs the others leave; its CPU time much less (with one thread per process: multi-threaded
runtimes also count their spin-waits). Works for ../shared/bench/*_anchor.py and gkd_step.py.
"""

import runpy
import sys
import time

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    time.perf_counter = time.process_time
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
