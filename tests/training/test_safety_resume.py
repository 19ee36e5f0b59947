"""`--resume latest` with damaged newest checkpoints: each is moved aside (never deleted) with its reason said,
and training continues exactly from the newest whole one."""

from __future__ import annotations

import logging
from pathlib import Path

from fixtures import losses, train_on_the_kit


def train(tiny_models, run: Path, *extra: str) -> int:
    return train_on_the_kit(tiny_models, run, "--max-steps", "3", "--set", "keep_checkpoints=3", *extra)


def test_damaged_newest_checkpoints_are_set_aside_and_the_newest_whole_one_resumed(tmp_path, tiny_models, caplog, capsys):
    run = tmp_path / "run"
    assert train(tiny_models, run) == 0
    history = losses(run)
    checkpoints = run / "checkpoints"
    optimizer = checkpoints / "checkpoint-00000003" / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])  # a full disk, a cut copy
    truncated = optimizer.stat().st_size
    (checkpoints / "checkpoint-00000002" / "adapter" / "flexip_adapter.safetensors").unlink()

    with caplog.at_level(logging.WARNING):
        assert train(tiny_models, run, "--resume", "latest") == 0
    said = caplog.text
    assert "checkpoint-00000003" in said and "optimizer.bin has" in said
    assert "checkpoint-00000002" in said and "flexip_adapter.safetensors is missing" in said
    # Kept aside as they were, out of the rotation; the run went on from step 1 exactly as before.
    assert (checkpoints / "damaged-checkpoint-00000003" / "optimizer.bin").stat().st_size == truncated
    assert (checkpoints / "damaged-checkpoint-00000002" / "adapter" / "flexip_config.json").is_file()
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-00000001", "checkpoint-00000002", "checkpoint-00000003",
    ]  # fmt: skip
    assert losses(run) == history

    # Nothing whole left: one line that says so, and nothing deleted.
    for checkpoint in [p for p in checkpoints.iterdir() if p.name.startswith("checkpoint-")]:
        (checkpoint / "training_state.json").write_text("{")
    capsys.readouterr()
    assert train(tiny_models, run, "--resume", "latest") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no whole checkpoint" in error and "--overwrite" in error
    assert len(list(checkpoints.glob("damaged-checkpoint-*"))) == 5
