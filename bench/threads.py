"""torch's default thread count against the command line's thread policy (flexip/cli/threads.py), side by side:
`flexip demo` and a short `flexip train --config configs/train/tiny.yaml`, on a quiet machine and then with
a competing load.

    cpujob --both python -m bench.threads                                  # 3 rounds, 3 training steps, load 2
    cpujob --both python -m bench.threads --repeats 5 --train-steps 10 --load 4

Each run is a new Python, `python -m flexip ...` on this tree's `src`, with neither OMP_NUM_THREADS nor
MKL_NUM_THREADS set, as in a user's shell. `default` passes `--threads D`, D being the count torch takes by
itself here (its default for this machine); `policy` passes nothing, so the command line chooses. Every run
writes into a new folder of one temporary directory, which is also the working directory (the training's
tiny model set is written there by the first, untimed, run of each command).

Two phases: no competing load, then `--load K` pure-Python busy loops, each a process of its own. Before a
phase's timed rounds, one untimed run of each command; with a load, the wait (at most `--settle` seconds)
until the 1-minute load average reaches K, as on a machine that has been busy for a while, which is what the
policy reads. Then `--repeats` rounds, each running every command and setting once in a new random order
(bench/measure.py), so a load change slows both settings alike. Per phase and command: each setting's median
and range, the threads the policy chose (computed just before each of its runs, from the load average its
run saw), and default / policy as the median of the per-round ratios with its interval (above 1: the policy
is faster).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.measure import interleaved_times, interval_name, paired_ratio
from bench.time_to_error import busy, spread
from flexip.cli.threads import THREAD_VARIABLES, chosen_threads, load_average, usable_cores

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny.yaml"
SETTINGS = ("default", "policy")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per phase (default: 3)")
    parser.add_argument(
        "--train-steps", type=int, default=3, help="optimizer steps of each training run (default: 3)"
    )
    parser.add_argument(
        "--load", type=int, default=2, help="competing busy processes of the second phase (default: 2)"
    )
    parser.add_argument(
        "--settle", type=float, default=90.0,
        help="most seconds to wait for the load average to reach --load before timing (default: 90)",
    )  # fmt: skip
    return parser.parse_args(argv)


def user_environment() -> dict[str, str]:
    """This environment without the thread variables (cpujob sets them): what a user's shell has."""
    environ = {name: value for name, value in os.environ.items() if name not in THREAD_VARIABLES}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    return environ


def torch_default_threads() -> int:
    """The thread count torch takes by itself in a user's environment on this machine."""
    probe = [sys.executable, "-c", "import torch; print(torch.get_num_threads())"]
    return int(
        subprocess.run(probe, env=user_environment(), capture_output=True, text=True, check=True).stdout
    )


def flexip(arguments: list[str], work: Path) -> None:
    """Runs `python -m flexip ARGUMENTS` in a new Python; stops the benchmark if it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "flexip", *arguments],
        check=False,  # a failure stops the benchmark with the command's own words, below
        cwd=work,
        env=user_environment(),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(
            f"`flexip {' '.join(arguments)}` exited with status {done.returncode}:\n{done.stdout}{done.stderr}"
        )


def commands(work: Path, train_steps: int) -> dict[str, Callable[[], list[str]]]:
    """Each command's `flexip` arguments for its next run, which writes into a new folder of `work`."""
    runs = collections.Counter()

    def demo() -> list[str]:
        runs["demo"] += 1
        return ["demo", "--out", str(work / f"demo-{runs['demo']}")]

    def train() -> list[str]:
        runs["train"] += 1
        output = work / f"train-{runs['train']}"
        return ["train", "--config", str(TINY), "--max-steps", str(train_steps), "--output-dir", str(output)]

    return {"demo": demo, "train": train}


def settle(load: int, most_seconds: float) -> None:
    """Waits until the 1-minute load average reaches `load`, or `most_seconds` have passed."""
    deadline = time.monotonic() + most_seconds
    while load_average() < load and time.monotonic() < deadline:
        time.sleep(5)  # the kernel updates the load average every 5 seconds


def measure_phase(
    work: Path,
    arguments: dict[str, Callable[[], list[str]]],
    default_threads: int,
    repeats: int,
    load: int,
    settle_s: float,
) -> dict:
    """Seconds per (command, setting) over the rounds, the threads the policy chose before each of its runs,
    and the load average at the start and at the end of the timed rounds. `arguments`: `commands(work, ...)`."""
    chosen = collections.defaultdict(list)

    def run(command: str, setting: str):
        def call():
            if setting == "default":
                flexip(["--threads", str(default_threads), *arguments[command]()], work)
            else:
                chosen[command].append(chosen_threads(None, {}, usable_cores(), load_average()))
                flexip(arguments[command](), work)

        return call

    calls = {(command, setting): run(command, setting) for command in arguments for setting in SETTINGS}
    with busy(load):
        for next_arguments in arguments.values():  # untimed: checks each command, writes the tiny model set
            flexip(next_arguments(), work)
        if load:
            settle(load, settle_s)
        load_start = load_average()
        chosen.clear()
        times = interleaved_times(calls, repeats)
        load_end = load_average()
    return {"seconds": times, "policy_threads": dict(chosen), "load_start": load_start, "load_end": load_end}


def main(argv=None) -> dict:
    args = parse_args(argv)
    default_threads = torch_default_threads()
    phases = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        arguments = commands(work, args.train_steps)  # one count of runs for both phases: a new folder each
        for load in dict.fromkeys([0, args.load]):
            phases[load] = measure_phase(work, arguments, default_threads, args.repeats, load, args.settle)
    print(
        f"# torch's default threads ({default_threads}) against the thread policy: `flexip demo` and `flexip train "
        f"--config configs/train/tiny.yaml --max-steps {args.train_steps}`, a new Python per run, {args.repeats} "
        f"rounds, {usable_cores()} usable cores, Python {platform.python_version()}, {datetime.date.today()}"
    )
    print(
        "| busy processes | load average | command | default s, median [min–max] | policy s, median [min–max] "
        f"| policy's threads | default / policy [{interval_name(args.repeats)}] |"
    )
    print("|---|---|---|---|---|---|---|")
    for load, phase in phases.items():
        times = phase["seconds"]
        for command in ("demo", "train"):
            default, policy = times[command, "default"], times[command, "policy"]
            ratio, low, high = paired_ratio(default, policy)
            threads = " ".join(str(n) for n in phase["policy_threads"][command])
            print(
                f"| {load} | {phase['load_start']:.2f}–{phase['load_end']:.2f} | {command} | {spread(default)} "
                f"| {spread(policy)} | {threads} | {ratio:.2f} [{low:.2f}, {high:.2f}] |"
            )
    return {"default_threads": default_threads, "phases": phases}


if __name__ == "__main__":
    main()
