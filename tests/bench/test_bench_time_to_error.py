"""The time-to-error benchmark (bench/time_to_error.py) times each source tree's own `flexip`, reports the line
it printed, and stops on a run that did not end in one error line. Stand-in trees whose `flexip` answers at
once or after a set delay keep it to seconds."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from PIL import Image

from bench import time_to_error

# A source tree's `python -m flexip`: prints one line naming its tree and arguments after `delay` seconds.
STAND_IN = """import pathlib, sys, time
time.sleep({delay})
for _ in range({lines}):
    print(pathlib.Path(__file__).parents[1].name, "error:", " ".join(sys.argv[1:]), file=sys.stderr)
sys.exit({status})
"""


def stand_in(folder: Path, delay: float = 0.0, lines: int = 1, status: int = 2) -> Path:
    (folder / "flexip").mkdir(parents=True)
    (folder / "flexip" / "__init__.py").touch()  # a package, not a namespace portion the installed one hides
    (folder / "flexip" / "__main__.py").write_text(STAND_IN.format(delay=delay, lines=lines, status=status))
    return folder


def test_each_tree_is_timed_to_its_own_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(time_to_error, "SRC", stand_in(tmp_path / "quick"))
    slow = stand_in(tmp_path / "slow", delay=0.3)
    results = time_to_error.main(["--baseline", str(slow), "--repeats", "2", "--load", "1"])
    times, lines = results["seconds"], results["lines"]
    assert results["mistakes"] == ["--preservation 2", "existing --out", "missing --adapter"]
    assert set(times) == {(tree, m) for tree in ("current", "baseline") for m in results["mistakes"]}
    assert all(len(seconds) == 2 for seconds in times.values())
    output = capsys.readouterr().out
    for mistake in results["mistakes"]:
        assert min(times["baseline", mistake]) >= 0.3 > max(times["current", mistake])
        assert lines["current", mistake].startswith("quick error: generate --reference")
        assert lines["baseline", mistake].startswith("slow error: generate --reference")
        assert f"{mistake}, baseline: {lines['baseline', mistake]}" in output
        ratios = [b / c for b, c in zip(times["baseline", mistake], times["current", mistake])]
        assert f"| {mistake} | " in output and f"| {statistics.median(ratios):.2f} [" in output
    assert "1 competing busy processes" in output and "baseline / current [min–max]" in output


@pytest.mark.parametrize(
    ("lines", "status", "said"), [(1, 0, "status 0 and 1 lines"), (2, 2, "status 2 and 2 lines")]
)
def test_a_run_that_does_not_end_in_one_error_line_stops_it(tmp_path, lines, status, said):
    quick, broken = stand_in(tmp_path / "quick"), stand_in(tmp_path / "broken", lines=lines, status=status)
    with pytest.raises(SystemExit, match=f"broken: `flexip generate .*` exited with {said}, not 2"):
        time_to_error.measure({"current": quick, "baseline": broken}, repeats=1)


def test_each_command_is_valid_but_for_its_one_mistake(tmp_path):
    commands = time_to_error.mistakes(tmp_path)

    def option(arguments: list[str], name: str) -> str:
        return arguments[arguments.index(name) + 1]

    for arguments in commands.values():
        assert arguments[0] == "generate" and option(arguments, "--prompt")
        assert Image.open(option(arguments, "--reference")).size > (0, 0)
    assert option(commands["--preservation 2"], "--preservation") == "2"
    assert not Path(option(commands["--preservation 2"], "--out")).exists()
    assert Path(option(commands["existing --out"], "--out")).is_file()
    assert "--preservation" not in commands["existing --out"]
    assert not Path(option(commands["missing --adapter"], "--adapter")).exists()
    assert not Path(option(commands["missing --adapter"], "--out")).exists()


def test_a_baseline_without_flexip_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        time_to_error.main(["--baseline", str(tmp_path)])
    assert stop.value.code == 2
    assert f"--baseline {tmp_path} holds no flexip/__main__.py" in capsys.readouterr().err
