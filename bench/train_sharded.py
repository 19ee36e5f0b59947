"""Sharded training on GPUs: DDP, DeepSpeed ZeRO-2 and FSDP2 (configs/accelerate/) each train the tiny kit, are
killed with SIGKILL after a checkpoint and resumed; per strategy it checks and reports

  resume      the resumed run's losses against an uninterrupted run's (max relative difference)
  checkpoint  the tensors every checkpoint file holds: none of the frozen UNet's, at most a few adapters' worth
  export      run/adapter loads, and its hash is the newest checkpoint's
  peak, step  the largest torch.cuda.max_memory_allocated of the processes, the median step time

    python bench/train_sharded.py                           # every GPU of this machine, the tiny SD1.5 kit
    python bench/train_sharded.py --family sdxl --strategies fsdp deepspeed-zero2
    python bench/train_sharded.py --dry-run --num-processes 8   # print the launches; runs and writes nothing

Each strategy's status is `passed` (every check held), `FAILED`, or `NOT RUN` with the reason: DeepSpeed not
installed (`pip install deepspeed`; it is not a flexip dependency), FSDP or DeepSpeed without a GPU (accelerate
enables them only there), or accelerate running the launch as another kind than the strategy's (each process
records the kind it trained under). The exit code is 0 only when every strategy asked for passed.
The kit is written under --out (no downloads); bf16; the batch fills the kit's 8 pairs. NOT YET RUN ON A GPU.
Its DDP leg ran on a CPU machine (`--strategies ddp --num-processes 2`, gloo); tests/training/test_train_sharded.py runs
the FSDP and DeepSpeed checkpoint paths on two gloo CPU processes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
STRATEGIES = ("ddp", "deepspeed-zero2", "fsdp")
STEPS, CHECKPOINT_EVERY = 10, 2  # killed after the second checkpoint, resumed from it
KIT_PAIRS = 8  # the tiny kit's data set: the global batch must fit it
# GPU kernels (cuDNN's backward convolutions, atomics) need not be deterministic, so resumed and uninterrupted
# runs may differ in the last bits; the CPU tests check bit-exactness.
LOSS_RTOL = 1e-3
CHECKPOINT_ADAPTERS = (
    8  # a checkpoint may hold this many adapters' worth of numbers (weights, masters, moments)
)
# accelerate's DistributedType each strategy must train under (DDP over gloo on CPUs is MULTI_CPU)
RUNS_AS = {"ddp": ("MULTI_GPU", "MULTI_CPU"), "deepspeed-zero2": ("DEEPSPEED",), "fsdp": ("FSDP",)}


def train_args(kit: Path, family: str, run: Path, batch_size: int, resume: bool) -> list[str]:
    """`flexip train` arguments for one run on the kit."""
    config = ROOT / "configs" / "train" / {"sd15": "tiny.yaml", "sdxl": "tiny-sdxl.yaml"}[family]
    overrides = [
        "model.tiny_models=''", f"model.base={kit / 'base'}", f"model.image_encoder={kit / 'image_encoder'}",
        f"model.dino_encoder={kit / 'dinov2'}", f"data.manifest={kit / 'data' / 'manifest.jsonl'}",
        "mixed_precision=bf16", f"batch_size={batch_size}", "log_with=[]", "log_every=1",
        f"checkpoint_every={CHECKPOINT_EVERY}", "keep_checkpoints=2",
        f"validation.every={STEPS}",  # the last step's: FSDP2 gathers the adapter for it (sharded.full_parameters)
    ]  # fmt: skip
    args = ["train", "--config", str(config), "--output-dir", str(run), "--max-steps", str(STEPS)]
    args += ["--resume", "latest"] if resume else []
    return args + [a for o in overrides for a in ("--set", o)]


def launch(strategy: str, processes: int, port: int, run: Path, train: list[str]) -> list[str]:
    """`accelerate launch` of this script's worker, which runs `flexip train` and records its process."""
    config = ROOT / "configs" / "accelerate" / f"{strategy}.yaml"
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),  # this interpreter's
        "--num_processes", str(processes), "--main_process_port", str(port),
        str(SCRIPT), "--worker", str(run / "workers"), *train,
    ]  # fmt: skip


def worker(directory: Path, argv: list[str]) -> int:
    """One training process: its pid (for the kill) before; after, the kind of run accelerate made of it and its
    peak GPU memory (None on CPUs, where DDP runs over gloo)."""
    import torch
    from accelerate.state import AcceleratorState

    from flexip.cli import main

    rank = int(os.environ["RANK"])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"pid-{rank}").write_text(str(os.getpid()))
    code = main(argv)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    ran_as = AcceleratorState().distributed_type.value
    (directory / f"ran-{rank}.json").write_text(json.dumps({"peak_bytes": peak, "distributed_type": ran_as}))
    return code


def kill_after(command: list[str], run: Path, checkpoint: Path, timeout: float = 900) -> int:
    """Start `command`, SIGKILL every training process once `checkpoint` is complete; returns the step of the
    newest checkpoint left, which the resumed run starts from."""
    process = subprocess.Popen(command, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not checkpoint.is_dir():
        if process.poll() is not None:
            raise RuntimeError(f"{run}: training ended (exit {process.returncode}) before {checkpoint.name}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise RuntimeError(f"{run}: no {checkpoint.name} within {timeout:.0f} s")
        time.sleep(0.05)
    # torchrun starts each worker in its own session: kill them by pid, then the launcher.
    for pid_file in (run / "workers").glob("pid-*"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass
        pid_file.unlink()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    from flexip.training.checkpoint import list_checkpoints

    return int(list_checkpoints(run)[-1].name.removeprefix("checkpoint-"))


def losses(run: Path) -> dict[int, float]:
    """Each step's logged loss; a resumed run's later records replace the killed run's."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records}


def stored_tensors(checkpoint: Path) -> dict[str, int]:
    """Every tensor in the checkpoint's weight and state files, as `file:key.path` -> number of elements."""
    import torch
    from safetensors.torch import load_file

    found = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            found[prefix] = value.numel()
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(f"{prefix}.{index}", item)

    for file in sorted(checkpoint.rglob("*")):
        name = str(file.relative_to(checkpoint))
        if file.suffix == ".safetensors":
            walk(name + ":", load_file(file))
        elif file.suffix in (".bin", ".pt"):  # our own files: DeepSpeed's hold objects besides tensors
            walk(name + ":", torch.load(file, map_location="cpu", weights_only=False))
    return found


def check(strategy: str, reference: Path, resumed: Path, start: int, processes: int, batch_size: int) -> dict:
    """The report's row for one strategy (see the module docstring), the run resumed from step `start`; `ok`
    says whether every check passed."""
    from flexip.models.adapter import FlexIPAdapter
    from flexip.training.checkpoint import list_checkpoints, parameter_hash

    ran = [
        json.loads(f.read_text())
        for run in (reference, resumed)
        for f in (run / "workers").glob("ran-*.json")
    ]
    kinds = sorted({record["distributed_type"] for record in ran})
    if not ran or not set(kinds) <= set(RUNS_AS[strategy]):
        return not_run(
            strategy, f"accelerate ran it as {kinds or 'nothing recorded'}, not {'/'.join(RUNS_AS[strategy])}"
        )
    expected, got = losses(reference), losses(resumed)
    checkpoints = list_checkpoints(resumed)
    steps = [step for step in expected if step > start]
    # A step the resumed run did not log is a failed resume, as is a resume with no step to compare.
    worst = max(
        (abs(got.get(s, math.inf) - expected[s]) / max(abs(expected[s]), 1e-12) for s in steps),
        default=math.inf,
    )

    exported = FlexIPAdapter.from_pretrained(resumed / "adapter")
    adapter_numel = sum(p.numel() for p in exported.parameters())
    newest = json.loads((checkpoints[-1] / "training_state.json").read_text())
    export_ok = set(newest["parameter_hashes"]) == {parameter_hash(exported)}
    tensors = {}
    for checkpoint in checkpoints:
        tensors.update({f"{checkpoint.name}/{key}": n for key, n in stored_tensors(checkpoint).items()})
    unet_keys = [key for key in tensors if "unet." in key]
    per_checkpoint = max(
        sum(n for key, n in tensors.items() if key.startswith(c.name + "/")) for c in checkpoints
    )  # fmt: skip
    checkpoint_ok = not unet_keys and per_checkpoint <= CHECKPOINT_ADAPTERS * adapter_numel
    sample_ok = (resumed / "samples" / f"step-{STEPS:08d}.png").is_file()

    peaks = [record["peak_bytes"] for record in ran if record["peak_bytes"] is not None]
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    # A step's time window holds the previous step's checkpoint: only the steps after one without are timed.
    step_seconds = [
        batch_size * processes / r["samples_per_second"]
        for r in records if r["step"] > 2 and (r["step"] - 1) % CHECKPOINT_EVERY
    ]  # fmt: skip
    passed = worst <= LOSS_RTOL and export_ok and checkpoint_ok and sample_ok
    return {
        "strategy": strategy, "status": "passed" if passed else "FAILED",
        "resumed_from": start, "loss_max_rel_diff": worst, "export_hash_matches": export_ok,
        "validation_sample": sample_ok,
        "checkpoint_elements": per_checkpoint, "adapter_elements": adapter_numel, "unet_keys": unet_keys[:3],
        "files": {str(f.relative_to(checkpoints[-1])): f.stat().st_size
                  for f in sorted(checkpoints[-1].rglob("*")) if f.is_file()},
        "peak_gib": max(peaks) / 2**30 if peaks else None,
        "step_ms": 1000 * statistics.median(step_seconds) if step_seconds else None,
    }  # fmt: skip


def not_run(strategy: str, reason: str) -> dict:
    """The report's row for a strategy that could not run as itself: never counted as passing."""
    return {"strategy": strategy, "status": "NOT RUN", "reason": reason}


def cannot_run(strategy: str) -> str | None:
    """Why `strategy` cannot run on this machine, before anything is launched; None when it can."""
    import torch

    if strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        return "DeepSpeed is not installed (pip install deepspeed)"
    if strategy != "ddp" and not torch.cuda.is_available():
        return "no GPU: accelerate enables FSDP and DeepSpeed only on GPUs (on CPUs it would train plain DDP)"
    return None


def run_strategy(strategy: str, args, kit: Path, batch_size: int, port: int) -> dict:
    base = args.out / strategy
    reference, killed = base / "reference", base / "killed"
    uninterrupted = launch(strategy, args.num_processes, port, reference,
                           train_args(kit, args.family, reference, batch_size, resume=False))  # fmt: skip
    interrupted = launch(strategy, args.num_processes, port + 1, killed,
                         train_args(kit, args.family, killed, batch_size, resume=False))  # fmt: skip
    resumed = launch(strategy, args.num_processes, port + 2, killed,
                     train_args(kit, args.family, killed, batch_size, resume=True))  # fmt: skip
    second = killed / "checkpoints" / f"checkpoint-{2 * CHECKPOINT_EVERY:08d}"
    if args.dry_run:
        print(shlex.join(uninterrupted))
        print(shlex.join(interrupted), f"  # SIGKILL once {second.name} is complete")
        print(shlex.join(resumed))
        return {"strategy": strategy, "status": "dry run"}
    reason = cannot_run(strategy)
    if reason:
        return not_run(strategy, reason)
    try:
        subprocess.run(uninterrupted, check=True)
        start = kill_after(interrupted, killed, second)
        subprocess.run(resumed, check=True)
    except (
        subprocess.CalledProcessError,
        RuntimeError,
    ) as e:  # a run that broke: this strategy failed, go on
        return {"strategy": strategy, "status": "FAILED", "reason": str(e)}
    return check(strategy, reference, killed, start, args.num_processes, batch_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-sharded", help="runs and report")
    parser.add_argument("--num-processes", type=int, help="processes (GPUs) per run; default: every GPU")
    parser.add_argument(
        "--family", choices=["sd15", "sdxl"], default="sd15", help="the tiny kit's base family"
    )
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--dry-run", action="store_true", help="print the launches; run and write nothing")
    args = parser.parse_args(argv)
    if args.num_processes is None:
        import torch

        args.num_processes = torch.cuda.device_count()
    if args.num_processes < 1:
        parser.error("--num-processes: no GPU found; give the number of processes (or run with --dry-run)")
    if args.num_processes > KIT_PAIRS:
        parser.error(
            f"--num-processes: at most {KIT_PAIRS} (a batch of one pair each fills the tiny kit's data set)"
        )
    batch_size = KIT_PAIRS // args.num_processes
    kit = args.out / f"kit-{args.family}"
    if not args.dry_run:
        from flexip.families.registry import family_named
        from flexip.tiny import save_tiny_model_set

        if args.out.exists():
            parser.error(f"--out {args.out} exists; give a new folder (the runs must start fresh)")
        save_tiny_model_set(kit, family=family_named(args.family))
    rows = [run_strategy(s, args, kit, batch_size, 29500 + 10 * i) for i, s in enumerate(args.strategies)]
    if args.dry_run:
        return 0
    (args.out / "report.json").write_text(json.dumps(rows, indent=2) + "\n")
    for row in rows:
        print(f"{row['strategy']}: {row['status']}" + (f" ({row['reason']})" if "reason" in row else ""))
        print(json.dumps(row))
    print(f"report: {args.out / 'report.json'}")
    return 0 if all(row["status"] == "passed" for row in rows) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(worker(Path(sys.argv[2]), sys.argv[3:]))
    sys.exit(main())
