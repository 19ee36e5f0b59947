"""The sharded-training GPU script (`bench/train_sharded.py`) never reports a strategy it could not run as
passing: on a machine without DeepSpeed or a GPU those strategies are NOT RUN, and a launch accelerate ran as
another kind of run than the strategy's is NOT RUN too."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from bench import train_sharded

needs_no_gpu = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks what a machine without a GPU reports"
)


@needs_no_gpu
def test_strategies_this_machine_cannot_run_are_reported_not_run(tmp_path, capsys):
    out = tmp_path / "out"
    code = train_sharded.main(
        ["--out", str(out), "--num-processes", "2", "--strategies", "fsdp", "deepspeed-zero2"]
    )
    assert code == 1  # nothing passed
    rows = json.loads((out / "report.json").read_text())
    assert [(row["strategy"], row["status"]) for row in rows] == [
        ("fsdp", "NOT RUN"),
        ("deepspeed-zero2", "NOT RUN"),
    ]
    assert "only on GPUs" in rows[0]["reason"]
    if importlib.util.find_spec("deepspeed") is None:
        assert "DeepSpeed is not installed" in rows[1]["reason"]
    printed = capsys.readouterr().out
    assert "fsdp: NOT RUN (no GPU" in printed and "passed" not in printed
    assert not (out / "fsdp").exists()  # nothing launched


@pytest.mark.parametrize(
    "strategy, recorded",
    [("fsdp", ["MULTI_CPU", "MULTI_CPU"]), ("deepspeed-zero2", ["MULTI_GPU"]), ("ddp", ["NO"]), ("ddp", [])],
    ids=["fsdp-as-ddp", "zero2-as-ddp", "ddp-one-process", "nothing-recorded"],
)
def test_a_run_accelerate_made_into_another_kind_is_not_run(strategy, recorded, tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "killed"
    for run in (reference, resumed):
        (run / "workers").mkdir(parents=True)
        for rank, kind in enumerate(recorded):
            (run / "workers" / f"ran-{rank}.json").write_text(
                json.dumps({"peak_bytes": None, "distributed_type": kind})
            )
    row = train_sharded.check(strategy, reference, resumed, start=4, processes=2, batch_size=4)
    assert row["status"] == "NOT RUN" and "accelerate ran it as" in row["reason"]
