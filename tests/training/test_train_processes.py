"""Training as real processes: killed with SIGKILL and resumed, and two processes through torchrun (gloo on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import TINY_MODELS, losses
from flexip.cli import main
from flexip.models.adapter import FlexIPAdapter
from flexip.training.checkpoint import parameter_hash

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"
CONFIG = CONFIGS / "tiny.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # one thread each: two cores are shared



def train_args(
    models, manifest: Path, output_dir: Path, max_steps: int, *extra: str, resume: str | None = None,
    config: Path = CONFIG,
) -> list[str]:
    overrides = [
        "model.tiny_models=''", f"model.base={models.base}", f"model.image_encoder={models.image_encoder}",
        f"model.dino_encoder={models.dinov2}", f"data.manifest={manifest}", "log_with=[]", "log_every=1",
        "validation.every=1000", "learning_rate=1e-2", *extra,
    ]  # fmt: skip
    args = ["train", "--config", str(config), "--output-dir", str(output_dir), "--max-steps", str(max_steps)]
    args += ["--resume", resume] if resume else []
    return args + [a for o in overrides for a in ("--set", o)]


@pytest.mark.parametrize(
    ("family", "source"), [("sd15", "manifest"), ("sdxl", "manifest"), ("flux", "manifest"), ("sd15", "shards")]
)
def test_sigkill_after_a_checkpoint_then_resume_gives_the_uninterrupted_losses(
    tmp_path, request, four_pairs, family, source
):
    models = request.getfixturevalue(TINY_MODELS[family])
    config = CONFIGS / {"sd15": "tiny.yaml", "sdxl": "tiny-sdxl.yaml", "flux": "tiny-flux.yaml"}[family]
    streamed = []
    if source == "shards":  # the same pairs streamed from four one-sample shards, in one lane
        shards = tmp_path / "shards"
        assert main(["prep", "shards", str(four_pairs), "--out", str(shards), "--shard-size", "1"]) == 0
        streamed = [f"data.shards={shards}", "data.lanes=1"]

    def args(output_dir: Path, max_steps: int, *extra: str, resume: str | None = None) -> list[str]:
        return train_args(models, four_pairs, output_dir, max_steps, *extra, *streamed, resume=resume, config=config)

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "flexip", *args(killed, 1000, "checkpoint_every=2",
                               "keep_checkpoints=2")], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    checkpoints = killed / "checkpoints"
    deadline = time.monotonic() + 120
    while not (checkpoints / "checkpoint-00000004").is_dir():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no second checkpoint within 2 minutes"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()

    complete = sorted(p.name for p in checkpoints.glob("checkpoint-*"))
    assert len(complete) <= 2  # keep_checkpoints, even with a save in flight when killed
    latest = int(complete[-1].split("-")[1])
    assert main(args(killed, latest + 3, "checkpoint_every=2", resume="latest")) == 0
    reference = tmp_path / "reference"
    assert main(args(reference, latest + 3, "checkpoint_every=2")) == 0
    expected, resumed = losses(reference), losses(killed)
    assert [resumed[s] for s in range(latest + 1, latest + 4)] == [
        expected[s] for s in range(latest + 1, latest + 4)
    ]
    exported = FlexIPAdapter.from_pretrained(killed / "adapter")  # the export is loadable, and knows its family
    assert exported.config.base_family == family


ACCELERATE_DDP = Path(__file__).resolve().parents[2] / "configs" / "accelerate" / "ddp.yaml"
LAUNCHERS = {
    "torchrun": ["torchrun", "--standalone", "--nproc_per_node", "2"],
    # The shipped DDP config, as users launch it on GPUs; without one, each process runs on the CPU with gloo.
    "accelerate-ddp-config": ["accelerate", "launch", "--config_file", str(ACCELERATE_DDP), "--num_processes", "2",
                              "--main_process_port", "0"],
}  # fmt: skip


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_keep_identical_parameters(tmp_path, tiny_models, four_pairs, launcher):
    if shutil.which(LAUNCHERS[launcher][0]) is None:
        pytest.skip(f"{LAUNCHERS[launcher][0]} is not on PATH")
    run = tmp_path / "ddp"
    args = train_args(tiny_models, four_pairs, run, 3, "checkpoint_every=3", "batch_size=2")
    command = [*LAUNCHERS[launcher], "-m", "flexip", *args]
    finished = subprocess.run(command, check=False, env=ENV, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]

    state = json.loads((run / "checkpoints" / "checkpoint-00000003" / "training_state.json").read_text())
    assert state["num_processes"] == 2 and state["samples"] == 3 * 2 * 2
    rank0, rank1 = state["parameter_hashes"]
    assert rank0 == rank1  # DDP averaged the two processes' different batches into the same update
    assert parameter_hash(FlexIPAdapter.from_pretrained(run / "adapter")) == rank0


def test_two_processes_over_shards_consume_the_one_process_stream(tmp_path, tiny_models, twelve_pair_shards):
    """Two torchrun processes read disjoint lanes; the checkpoint's merged stream state is where one process
    that read the same global batches stands."""
    shards, data = twelve_pair_shards, twelve_pair_shards.parent / "data" / "manifest.jsonl"
    streamed = (f"data.shards={shards}", "data.lanes=2", "batch_size=2")
    two, one = tmp_path / "two", tmp_path / "one"
    command = [*LAUNCHERS["torchrun"], "-m", "flexip", *train_args(tiny_models, data, two, 3, "checkpoint_every=3", *streamed)]
    finished = subprocess.run(command, check=False, env=ENV, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert main(train_args(tiny_models, data, one, 6, "checkpoint_every=6", *streamed)) == 0  # the same 6 batches

    def stream_state(run: Path, step: int) -> dict:
        return json.loads((run / "checkpoints" / f"checkpoint-{step:08d}" / "training_state.json").read_text())

    two_state, one_state = stream_state(two, 3), stream_state(one, 6)
    assert two_state["samples"] == one_state["samples"] == 12
    assert two_state["stream"] == one_state["stream"] and set(one_state["stream"]["places"]) == {"0", "1"}
