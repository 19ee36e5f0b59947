"""Commands outside generation, training, preparation and evaluation under bad values: one line naming the
value, exit code 2, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexip.cli import main


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (lambda root: ["tiny-models", str(root / "a-file")], "a-file is a file"),
        (lambda root: ["tiny-models", str(root / "kit"), "--seed", "-1"], "--seed -1"),
        (lambda root: ["tiny-models", str(root / "kit"), "--seed", str(2**64)], f"--seed {2**64}"),
        (lambda root: ["tiny-models", str(root / "kit"), "--seed", str(2**32)], f"--seed {2**32}"),
    ],
    ids=["dir-is-a-file", "negative-seed", "seed-past-64-bits", "seed-past-32-bits"],
)
def test_a_bad_tiny_models_value_ends_in_one_line(tmp_path, capsys, argv, named):
    (tmp_path / "a-file").write_text("not a folder")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv(tmp_path)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("flexip ")]
    assert "Traceback" not in err and len(lines) == 1 and named in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_bad_resume_is_refused_before_the_tiny_kit_is_written(tmp_path, capsys):
    config = Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny.yaml"
    argv = ["train", "--config", str(config), "--output-dir", str(tmp_path / "run"), "--resume", "garbage",
            "--set", f"model.tiny_models={tmp_path / 'kit'}"]  # fmt: skip
    assert main(argv) == 2
    assert "--resume garbage: not a checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "kit").exists()
