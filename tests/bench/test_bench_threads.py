"""The thread benchmark (bench/threads.py) times torch's default thread count (`--threads D`) against the
policy (no flag) in a user's environment, each run in a new folder, with and without a competing load. A
stand-in `flexip` that logs its arguments and sleeps only when given `--threads` keeps it to seconds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from bench import threads

# A source tree's `python -m flexip`: logs its arguments and thread variables, sleeps when given --threads.
STAND_IN = """import json, os, sys, time
with open({log!r}, "a") as log:
    log.write(json.dumps([sys.argv[1:], os.environ.get("OMP_NUM_THREADS"), os.environ.get("MKL_NUM_THREADS")]))
    log.write("\\n")
time.sleep(0.2 if "--threads" in sys.argv else 0)
sys.exit({status})
"""


def stand_in(folder: Path, log: Path, status: int = 0) -> Path:
    (folder / "flexip").mkdir(parents=True)
    (folder / "flexip" / "__init__.py").touch()  # a package, not a namespace portion the installed one hides
    (folder / "flexip" / "__main__.py").write_text(STAND_IN.format(log=str(log), status=status))
    return folder


def test_default_threads_and_the_policy_are_timed_side_by_side(tmp_path, monkeypatch, capsys):
    log = tmp_path / "runs.jsonl"
    monkeypatch.setattr(threads, "SRC", stand_in(tmp_path / "tree", log))
    monkeypatch.setattr(threads, "torch_default_threads", lambda: 3)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as cpujob sets it: the runs must not inherit it
    results = threads.main(["--repeats", "2", "--train-steps", "4", "--load", "1", "--settle", "0"])
    assert results["default_threads"] == 3 and set(results["phases"]) == {0, 1}
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(runs) == 2 * (2 + 2 * 4)  # per phase: one untimed run per command, then 2 rounds of 4
    assert all(omp is None and mkl is None for _, omp, mkl in runs)
    demo_outs = [argv[argv.index("--out") + 1] for argv, _, _ in runs if "demo" in argv]
    train_outs = [argv[argv.index("--output-dir") + 1] for argv, _, _ in runs if "train" in argv]
    assert len(set(demo_outs)) == len(demo_outs) == 10 and len(set(train_outs)) == len(train_outs) == 10
    assert all(argv[argv.index("--max-steps") + 1] == "4" for argv, _, _ in runs if "train" in argv)
    timed = [argv for argv, _, _ in runs if "--threads" in argv]
    assert len(timed) == 8 and all(argv[:2] == ["--threads", "3"] for argv in timed)
    output = capsys.readouterr().out
    for load, phase in results["phases"].items():
        for command in ("demo", "train"):
            default, policy = phase["seconds"][command, "default"], phase["seconds"][command, "policy"]
            assert len(default) == len(policy) == 2 and min(default) >= 0.2  # only --threads sleeps
            assert len(phase["policy_threads"][command]) == 2
            ratio = statistics.median(d / p for d, p in zip(default, policy))
            assert f"| {load} | " in output and f"| {command} | " in output and f"| {ratio:.2f} [" in output
    assert "torch's default threads (3)" in output and "default / policy [min–max]" in output


def test_a_failing_command_stops_it_with_its_words(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "SRC", stand_in(tmp_path / "tree", tmp_path / "runs.jsonl", status=1))
    with pytest.raises(SystemExit, match="`flexip demo --out .*` exited with status 1"):
        threads.measure_phase(tmp_path, threads.commands(tmp_path, 1), 3, repeats=1, load=0, settle_s=0)
