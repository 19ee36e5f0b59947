"""How long a user waits to hear of a mistake: the wall time from starting `flexip generate` to its exit with
one error line, for this source tree and a baseline one side by side.

    git clone -q . /tmp/before && git -C /tmp/before checkout -q COMMIT      # the baseline: any checkout
    cpujob --both python -m bench.time_to_error --baseline /tmp/before/src            # a quiet machine
    cpujob --both python -m bench.time_to_error --baseline /tmp/before/src --load 2   # a busy one

Three mistakes, each in an otherwise valid command (the demo's reference picture, a prompt, the embedded
model): `--preservation 2` (outside [0, 1]), an `--out` file that already exists, an `--adapter` directory
that does not exist. Each run is a new Python, as a user's is, with the tree's `src` folder first on
PYTHONPATH; it must exit with status 2 and print exactly one line, which the table's notes quote. One untimed
run of each first (the checks, and the file cache warm for both trees), then `--repeats` rounds, each running
every tree and mistake once in a new random order (bench/measure.py), so a load change slows both trees alike.
Per mistake: each tree's median and its range over the rounds, and baseline / current as the median of the
per-round ratios with its interval (above 1: this tree answers sooner).

`--load K` runs K pure-Python busy loops, each a process of its own, for the whole measurement: a competing
load on the CPUs. The machine's 1-minute load average is shown before they start and at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.measure import interleaved_times, interval_name, paired_ratio

SRC = Path(__file__).resolve().parents[1] / "src"
REFERENCE = SRC / "flexip" / "assets" / "demo" / "reference.png"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--baseline", type=Path, required=True, help="the baseline's source folder: a checkout's src"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default: 5)")
    parser.add_argument("--load", type=int, default=0, help="competing busy processes (default: 0)")
    args = parser.parse_args(argv)
    if not (args.baseline / "flexip" / "__main__.py").is_file():
        parser.error(f"--baseline {args.baseline} holds no flexip/__main__.py: give a checkout's src folder")
    return args


def mistakes(work: Path) -> dict[str, list[str]]:
    """`flexip` arguments per mistake, each one away from a valid command; writes the file that must exist."""
    valid = ["generate", "--reference", str(REFERENCE), "--prompt", "a toy on a beach"]
    existing, new = work / "existing.png", str(work / "new.png")
    shutil.copyfile(REFERENCE, existing)
    return {
        "--preservation 2": [*valid, "--preservation", "2", "--out", new],
        "existing --out": [*valid, "--out", str(existing)],
        "missing --adapter": [*valid, "--adapter", str(work / "no-such-adapter"), "--out", new],
    }


def error_line(tree: Path, arguments: list[str], work: Path) -> str:
    """Runs `python -m flexip ARGUMENTS` on the source folder `tree` in a new Python and returns the one line
    it printed; stops the benchmark if it did not exit with status 2 and one line."""
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "flexip", *arguments],
        check=False,  # the status is the thing checked, below
        cwd=work,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
    )
    lines = (done.stdout + done.stderr).splitlines()
    if done.returncode != 2 or len(lines) != 1:
        raise SystemExit(
            f"{tree}: `flexip {' '.join(arguments)}` exited with status {done.returncode} and {len(lines)} "
            f"lines, not 2 and one error line:\n{done.stdout}{done.stderr}"
        )
    return lines[0]


@contextlib.contextmanager
def busy(processes: int):
    """`processes` pure-Python busy loops, each a process of its own, while the block runs."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def measure(trees: dict[str, Path], repeats: int, load: int = 0) -> dict:
    """Seconds to the error line per (tree, mistake), the line each printed, and the load average before the
    competing processes start and at the end."""
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        commands = mistakes(work)
        lines = {}

        def run(tree: str, mistake: str):
            def call():
                lines[tree, mistake] = error_line(trees[tree], commands[mistake], work)

            return call

        calls = {(tree, mistake): run(tree, mistake) for tree in trees for mistake in commands}
        load_before = os.getloadavg()[0]
        with busy(load):
            for call in calls.values():  # untimed: checks every command and warms the file cache
                call()
            times = interleaved_times(calls, repeats)
            load_after = os.getloadavg()[0]
    return {
        "mistakes": list(commands),
        "seconds": times,
        "lines": lines,
        "load_before": load_before,
        "load_after": load_after,
    }


def spread(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):.2f} [{min(seconds):.2f}–{max(seconds):.2f}]"


def main(argv=None) -> dict:
    args = parse_args(argv)
    trees = {"current": SRC, "baseline": args.baseline.resolve()}
    results = measure(trees, args.repeats, args.load)
    times, lines = results["seconds"], results["lines"]
    print(
        f"# time to the error line of `flexip generate`, a new Python per run, {args.repeats} rounds, "
        f"{args.load} competing busy processes, {os.cpu_count()} CPUs, load average {results['load_before']:.2f} "
        f"before and {results['load_after']:.2f} at the end, Python {platform.python_version()}, "
        f"{datetime.date.today()}"
    )
    print(f"# current: {trees['current']}; baseline: {trees['baseline']}")
    print(
        "| mistake | current s, median [min–max] | baseline s, median [min–max] "
        f"| baseline / current [{interval_name(args.repeats)}] |"
    )
    print("|---|---|---|---|")
    for mistake in results["mistakes"]:
        current, baseline = times["current", mistake], times["baseline", mistake]
        ratio, low, high = paired_ratio(baseline, current)
        print(f"| {mistake} | {spread(current)} | {spread(baseline)} | {ratio:.2f} [{low:.2f}, {high:.2f}] |")
    for mistake in results["mistakes"]:
        for tree in trees:
            print(f"{mistake}, {tree}: {lines[tree, mistake]}")
    return results


if __name__ == "__main__":
    main()
