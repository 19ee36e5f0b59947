"""A second `flexip train` into a run folder never mixes two runs: it continues (--resume), starts over when told
(--overwrite, deleting only the run's own outputs), or refuses in one line before any model loads."""

from __future__ import annotations

from pathlib import Path

from fixtures import train_on_the_kit as train


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_rerun_refuses_continues_or_starts_over_when_told(tmp_path, tiny_models, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("my notes")  # not the run's: no command may touch it
    assert train(tiny_models, run, "--max-steps", "2") == 0
    before = snapshot(run)
    capsys.readouterr()

    # Again without --resume, even with another config: refused in one line, every file as it was.
    assert train(tiny_models, run, "--max-steps", "3", "--set", "learning_rate=0.5") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert str(run) in error and "--resume latest" in error and "--overwrite" in error
    assert snapshot(run) == before
    # A checkpoint of another run, continued into this folder, would mix them too.
    assert train(tiny_models, run, "--max-steps", "3", "--resume", str(run / "checkpoints" / "checkpoint-00000001"),
                 "--output-dir", str(tmp_path / "elsewhere")) == 0  # fmt: skip
    assert train(tiny_models, tmp_path / "elsewhere", "--resume", str(run / "checkpoints" / "checkpoint-00000002")) == 2
    assert "--resume" in capsys.readouterr().err

    # --resume latest continues the same run.
    assert train(tiny_models, run, "--max-steps", "3", "--resume", "latest") == 0
    assert (run / "checkpoints" / "checkpoint-00000003").is_dir()

    # --overwrite starts over: the old run's outputs go, other files stay.
    assert train(tiny_models, run, "--max-steps", "1", "--overwrite") == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-00000001"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert (run / "notes.txt").read_text() == "my notes"
    assert train(tiny_models, run, "--resume", "latest", "--overwrite") == 2  # contradictory: refused
    assert "give one of them" in capsys.readouterr().err
