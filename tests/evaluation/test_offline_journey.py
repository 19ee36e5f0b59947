"""The README's offline evaluation journey runs as written: every command of its section, in order,
in-process, in a fresh working folder, with the hub out of reach (conftest.py sets HF_HUB_OFFLINE)."""

from __future__ import annotations

import csv
import shlex
from pathlib import Path

from fixtures import REPO, rows
from flexip.cli import main

SECTION = "### The whole journey offline"


def readme_commands(text: str, heading: str) -> list[list[str]]:
    """The argv of each command in the first ```bash block under `heading`: continued lines joined, comments
    dropped, as a shell reads them."""
    lines = text.splitlines()
    start = lines.index("```bash", lines.index(heading))
    block = "\n".join(lines[start + 1 : lines.index("```", start)])
    commands = [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()]
    return [argv for argv in commands if argv]


def test_the_commands_are_read_as_a_shell_reads_them():
    text = "### Try\n\n```bash\nflexip a b \\\n    --c d   # why\n\n# only a comment\nflexip e\n```\n"
    assert readme_commands(text, "### Try") == [["flexip", "a", "b", "--c", "d"], ["flexip", "e"]]


def test_the_readme_evaluates_the_tiny_kit_offline(tmp_path, monkeypatch, capsys):
    commands = readme_commands((REPO / "README.md").read_text(), SECTION)
    steps = [" ".join(argv[1:3]) if argv[1] == "eval" else argv[1] for argv in commands]
    assert steps[0] == "tiny-models" and steps[-3:] == ["eval score", "eval rank", "eval curve"], steps
    assert "eval generate" in steps
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        assert argv[0] == "flexip", argv
        assert main(argv[1:]) == 0, (argv, capsys.readouterr().err)

    # Every image of every method is scored with the kit's backbones, then ranked and drawn.
    score = next(argv for argv in commands if argv[1:3] == ["eval", "score"])
    for generate in (argv for argv in commands if argv[1:3] == ["eval", "generate"]):
        results = Path(option(generate, "--out"))
        scores = rows(results / "scores.jsonl")
        assert len(scores) == len(rows(results / "manifest.jsonl")) > 0
        assert {row["clip_model"] for row in scores} == {option(score, "--clip-model")}
    out = Path(option(commands[-1], "--out"))
    with (out / "mrank.csv").open() as f:
        ranked = {row["method"] for row in csv.DictReader(f)}
    assert {"flexip preservation=0", "flexip preservation=1", "base"} <= ranked
    for figure in ("tradeoff.png", "smoothness.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]
