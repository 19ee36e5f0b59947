"""`train(config)`: the FlexIP training run (docs/method.md §3) on one process or many, through accelerate.

Named phases, top to bottom (dinov2's habit): `start` the run (accelerator, generated inputs, the checkpoint to
resume), `build` the models and data, `build_optimizer` (optimization.py), `restore` a checkpoint, then `loop`, which checkpoints
and exports the adapter (`checkpoint_and_export`) as it goes, and with `calibrate: true` the export's calibration
(`calibrate.py`). The loop is accelerate's canonical one (accumulate, backward, step); around it, one all-reduce
per optimizer step makes every process agree on the loss it logs, the skipped samples and whether a signal asked
to stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic_write_bytes, check_writable
from ..denoisers.registry import denoiser_of
from ..errors import FlexIPError
from ..evaluation.tiny_backbones import save_tiny_backbones
from ..models.adapter import FlexIPAdapter
from ..models.gate import COVERAGE_BINS, MODALITIES, coverage_counts, coverage_shares
from .calibrate import calibrate_export, discard_measurements
from .checkpoint import (
    TrainingState,
    export_adapter,
    list_checkpoints,
    load_checkpoint,
    recorded_lanes,
    register_hooks,
    save_checkpoint,
)
from .components import (
    FrozenModels,
    absolute_reference,
    check_objective,
    frozen_dtype,
    load_frozen_models,
    prepare_tiny_models,
)
from .config import TrainConfig, config_to_yaml
from .feature_cache import feature_shapes
from .objective import FlexIPTrainingModel
from .optimization import build_optimizer, check_optimizer, learning_rate, set_learning_rate
from .run_folder import check_run_folder, delete_outputs, resume_from_checkpoint
from .sharded import full_parameters, prepare
from .signals import StopSignals
from .sources import Source, data_loader, open_source, validation_pairs
from .validation import png_bytes, sweep, sweep_sheet, validation_references

logger = get_logger(__name__)

# Tracker -> (its module, what to install for it): TensorBoard comes with the `train` extra.
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "'flexip[train]'"), "wandb": ("wandb", "wandb")}


@dataclass
class TrainResult:
    run_dir: Path
    state: TrainingState
    interrupted: bool  # a signal stopped the run after saving a checkpoint
    adapter: FlexIPAdapter  # trained, attached to models.unet
    models: FrozenModels  # what it was trained with, ready to generate from


def _batch_seed(seed: int, position: int) -> int:
    """The noise/timestep/dropout/gate seed of the micro-batch starting at stream `position`."""
    return int(np.random.SeedSequence([seed, 1, position]).generate_state(1, np.uint64)[0] >> 1)


def _flat(data: dict, prefix: str = "") -> dict:
    """Nested config -> flat scalar hyper-parameters for the trackers."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _prepare_inputs(config: TrainConfig) -> None:
    """Write what a tiny config asks to be generated (the tiny model set and its small data set, and the metrics'
    backbones when it calibrates) if absent."""
    if config.model.tiny_models:
        prepare_tiny_models(config.model)
        if config.calibrate:  # the scorer's backbones, which the tiny recipes name in the kit
            save_tiny_backbones(config.model.tiny_models)


def _build_adapter(config: TrainConfig, unet, encoder) -> FlexIPAdapter:
    model = config.model
    return FlexIPAdapter.for_unet(
        unet, encoder.clip_embed_dim, encoder.dino_hidden_dim,
        base_model=absolute_reference(model.base),
        image_encoder=absolute_reference(model.image_encoder), dino_encoder=absolute_reference(model.dino_encoder),
        dino_layer=model.dino_layer, preservation=dataclasses.asdict(model.preservation),
        personalization=dataclasses.asdict(model.personalization), gate=dataclasses.asdict(model.gate),
    )  # fmt: skip


def _free_memory(device: torch.device) -> int:
    """Bytes free for a new allocation on `device` (for the CPU, the kernel's MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _check_memory(config: TrainConfig, unet, device: torch.device) -> None:
    """Refuse a batch whose denoiser activations alone cannot fit, before the first step (else the kernel kills it);
    the denoiser estimates them (`Denoiser.activation_values`)."""
    per_sample = denoiser_of(unet).activation_values(unet, config.data.resolution)
    needed = config.batch_size * per_sample * (4 if config.mixed_precision == "no" else 2)
    free = _free_memory(device)
    if needed > free:
        raise FlexIPError(
            f"config batch_size: {config.batch_size} needs about {needed / 2**30:.1f} GiB for the denoiser's "
            f"activations, more than the {free / 2**30:.1f} GiB free on {device}; lower batch_size (and raise "
            "gradient_accumulation_steps), or set gradient_checkpointing=true"
        )


@dataclass
class Run:
    """What every phase of one training run shares."""

    config: TrainConfig
    accelerator: Accelerator
    run_dir: Path
    resume_from: Path | None  # the checkpoint to continue from, if any


@dataclass
class Built:
    """The models and data of a run, before accelerate wraps them."""

    models: FrozenModels
    adapter: FlexIPAdapter  # trainable, attached to models.unet
    model: FlexIPTrainingModel  # the one module accelerate prepares
    source: Source  # the data: a manifest, shards or a feature cache
    idle: list[nn.Module]  # frozen modules kept on the CPU, off the device, while the loop runs


def train(config: TrainConfig, resume: str | None = None, overwrite: bool = False) -> TrainResult:
    """Train (or resume) the run in `config.output_dir`; returns its final state.

    A fresh run (no `resume`) into a folder that holds a run's outputs is refused, unless `overwrite` deletes
    them first (only those: other files in the folder stay).
    """
    run = start(config, resume, overwrite)
    built = build(run)
    model, optimizer = prepare(run.accelerator, built.model, build_optimizer(built.adapter, config), config)
    register_hooks(run.accelerator, built.adapter)
    state = restore(run, resume, model, optimizer, built.adapter)
    try:
        interrupted = loop(run, built, model, optimizer, state)
    except KeyboardInterrupt:
        saved = list_checkpoints(run.run_dir)
        saved_step = int(saved[-1].name.removeprefix("checkpoint-")) if saved else 0
        lost = "nothing is lost" if saved_step == state.step else (
            f"steps {saved_step + 1}-{state.step} are lost; --resume latest continues from step {saved_step}"
        )  # fmt: skip
        logger.warning(f"stopped at once at step {state.step}: {lost}")
        raise
    if state.skipped:
        logger.warning(
            f"{state.skipped} unreadable training pairs were skipped (each is logged above with its path)"
        )
    if config.calibrate and not interrupted:
        calibrate_export(config, run.accelerator, run.run_dir / "adapter", built.source)
    for module in built.idle:  # every frozen model on the device, ready to generate from
        module.to(run.accelerator.device)
    run.accelerator.end_training()
    return TrainResult(run.run_dir, state, interrupted, built.adapter.eval(), built.models)


def start(config: TrainConfig, resume: str | None, overwrite: bool = False) -> Run:
    """The accelerator, the inputs a tiny config asks for, and the checkpoint `resume` names."""
    for tracker in config.log_with:
        module, install = TRACKER_PACKAGES[tracker]
        if importlib.util.find_spec(module) is None:
            raise FlexIPError(
                f"config log_with: {tracker} is not installed; `pip install {install}` or remove it"
            )
    check_optimizer(config)
    if config.tf32:  # TF32 matmuls and convolutions on Ampere and later GPUs: faster, 10 mantissa bits
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.mixed_precision == "fp16" and not torch.accelerator.is_available():
        raise FlexIPError(
            "config mixed_precision: fp16 needs a GPU (its grad scaler does not run on CPUs); use bf16 or no"
        )
    run_dir = check_writable(Path(config.output_dir), "output_dir")
    previous = check_run_folder(run_dir, resume, overwrite)
    accelerator = Accelerator(
        # Without an accelerator device, accelerate runs torchrun's processes as one unless told it is on CPUs
        # (then it uses its multi-CPU gloo mode).
        cpu=not torch.accelerator.is_available(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=config.log_with or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    with accelerator.main_process_first():
        if accelerator.is_main_process and previous:
            delete_outputs(run_dir, previous)
        # The checkpoint first: a bad --resume is refused before the tiny kit is written.
        resume_from = resume_from_checkpoint(run_dir, resume, accelerator.is_main_process) if resume else None
        _prepare_inputs(config)
    return Run(config, accelerator, run_dir, resume_from)


def build(run: Run) -> Built:
    """The frozen models on the device, a fresh adapter attached to the denoiser, and the data stream."""
    config = run.config
    recorded = recorded_lanes(run.resume_from) if run.resume_from else None
    source = open_source(config, run.accelerator.num_processes, recorded)
    if source.lanes is not None:
        logger.info(source.lanes.note)
    check_objective(config)
    models = load_frozen_models(config.model, frozen_dtype(config.mixed_precision))
    # Training from a feature cache leaves the encoders whose outputs it holds on the CPU (FLUX.1's T5-XXL is
    # 9.5 GB in bf16): they encode the empty caption there once, and come to the device for the validation sweep.
    idle = models.cached_encoders() if source.cache is not None else []
    for module in models.modules():
        if not any(module is other for other in idle):
            module.to(run.accelerator.device)
    if source.cache is not None:
        source.shapes = feature_shapes(models, config.data.resolution, run.accelerator.device)
    if not config.gradient_checkpointing:
        _check_memory(config, models.unet, run.accelerator.device)
    set_seed(config.seed)  # the adapter starts from the same weights on every process and every run
    adapter = _build_adapter(config, models.unet, models.encoder)
    if config.gradient_checkpointing:
        models.unet.enable_gradient_checkpointing()
    model = FlexIPTrainingModel(models.unet, adapter, models.noise_scheduler, config)
    if config.compile_unet:  # in place, so the adapter's processors and hooks stay where they are
        models.unet.compile()
    return Built(models, adapter, model, source, idle)


def restore(run: Run, resume: str | None, model, optimizer, adapter: FlexIPAdapter) -> TrainingState:
    """The state of the checkpoint to resume (optimizer, RNG, stream position), or a fresh one."""
    if run.resume_from is not None:
        state = load_checkpoint(run.accelerator, model, optimizer, adapter, run.resume_from)
        logger.info(f"resumed from {run.resume_from} at step {state.step}")
        return state
    if resume:
        logger.info(f"no checkpoint in {run.run_dir / 'checkpoints'} yet: starting at step 0")
    return TrainingState()


def checkpoint_and_export(
    run: Run, model, optimizer, adapter: FlexIPAdapter, state: TrainingState, places: dict
) -> None:
    """A full checkpoint (all processes), then the adapter directory `flexip generate --adapter` loads.

    `places`: where this process's lanes stand (streaming; stream.py). Lane l is always read by process
    l mod W, so each process contributes its own lanes to the checkpoint's stream state.
    """
    if state.stream:  # streaming: `loop` set its lanes
        rank, world = run.accelerator.process_index, run.accelerator.num_processes
        merged = {}
        for part in gather_object([{lane: p for lane, p in places.items() if int(lane) % world == rank}]):
            merged.update(part)
        state.stream["places"] = merged
    path = save_checkpoint(
        run.accelerator, model, optimizer, adapter, state, run.run_dir, run.config.keep_checkpoints
    )
    if run.accelerator.is_main_process:
        export_adapter(run.accelerator, adapter, path, run.run_dir / "adapter")
        discard_measurements(run.run_dir / "adapter")
    logger.info(f"step {state.step}: saved {path} and {run.run_dir / 'adapter'}")


def _tenths(coverage: dict[str, list[float]]) -> dict[str, float]:
    """Trackers take scalars: one per tenth of the dial, grouped under the list's name (TensorBoard's sections)."""
    return {
        f"{name}/{tenth / COVERAGE_BINS:.1f}-{(tenth + 1) / COVERAGE_BINS:.1f}": share
        for name, shares in coverage.items()
        for tenth, share in enumerate(shares)
    }


def validate(run: Run, built: Built, references: list, step: int) -> None:
    """The dial's contact sheet at this step (main process), written to samples/step-N.png.

    The sheet is a view of the run, not part of it: a sheet that cannot be made is logged, and training goes
    on.
    """
    accelerator, adapter = run.accelerator, built.adapter
    if not references:
        logger.warning(f"step {step}: no contact sheet, as no training pair's reference could be read")
        return
    with full_parameters(accelerator, built.model):  # FSDP2: every process gathers, the main one samples
        if accelerator.is_main_process:
            adapter.eval()
            try:
                with accelerator.autocast(), on_device(built.idle, accelerator.device):
                    rows = sweep(
                        built.models, adapter, references, run.config.validation, run.config.data.resolution,
                        accelerator.device,
                    )  # fmt: skip
                validation = run.config.validation
                sheet = sweep_sheet(references, validation.prompts, validation.preservation, rows)
                atomic_write_bytes(run.run_dir / "samples" / f"step-{step:08d}.png", png_bytes(sheet))
            except Exception as e:  # noqa: BLE001 (whatever the sampling raised, the steps trained are kept)
                logger.warning(f"step {step}: no contact sheet ({type(e).__name__}: {e}); training goes on")
            finally:
                adapter.train()
        accelerator.wait_for_everyone()


@contextlib.contextmanager
def on_device(modules: list[nn.Module], device: torch.device):
    """`modules` on `device` inside the block, back where each was after it."""
    homes = [next(module.parameters()).device for module in modules]
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        for module, home in zip(modules, homes):
            module.to(home)


@contextlib.contextmanager
def _batches(loader: torch.utils.data.DataLoader):
    """The loader's batches; its worker processes stop when the loop ends, however it ends. They ignore
    SIGTERM (signals.py), so the interpreter's exit, which stops the workers still running with SIGTERM and
    waits for them, would wait forever after an error."""
    batches = iter(loader)
    try:
        yield batches
    finally:
        if hasattr(batches, "_shutdown_workers"):  # workers run (num_workers > 0)
            batches._shutdown_workers()


class _Tally:
    """What the loop counts for its metric lines: this process's loss, micro-steps and skipped pairs over the
    optimizer step under way, and the window's (all processes) since the last line."""

    def __init__(self, device: torch.device):
        self.loss_sum, self.micro_steps, self.skipped = torch.zeros((), device=device), 0, 0
        # Samples per modality and tenth of the dial: this step's on this process, and the window's over all.
        self.step_coverage = torch.zeros(len(MODALITIES), COVERAGE_BINS, device=device, dtype=torch.long)
        self.window_coverage = torch.zeros_like(self.step_coverage)
        self.new_window()

    def new_window(self) -> None:
        self.window_start, self.window_samples, self.window_losses = time.perf_counter(), 0, []
        self.window_coverage.zero_()

    def add(self, loss: torch.Tensor, g: torch.Tensor, modality: torch.Tensor, samples: int) -> None:
        """One micro-step's loss and gate values, over `samples` pairs on all processes."""
        self.window_samples += samples
        self.loss_sum += loss.detach().float()
        self.step_coverage += coverage_counts(g, modality)
        self.micro_steps += 1

    def end_step(self, accelerator: Accelerator, stop_requested: bool) -> tuple[float, int, bool]:
        """(the step's mean loss, the pairs it skipped, whether any process was asked to stop), all processes
        agreeing: the step's one collective sums the loss, the counts and the gate's coverage over them."""
        counts = torch.tensor(
            [self.micro_steps, self.skipped, stop_requested], device=self.loss_sum.device, dtype=torch.float32
        )
        totals = accelerator.reduce(
            torch.cat([self.loss_sum[None], counts, self.step_coverage.flatten().float()]), reduction="sum"
        )
        self.window_coverage += totals[4:].view_as(self.window_coverage).long()
        step_loss = float(totals[0] / totals[1])
        self.window_losses.append(step_loss)
        self.loss_sum.zero_()
        self.step_coverage.zero_()
        self.micro_steps = self.skipped = 0
        return step_loss, int(totals[2]), bool(totals[3] > 0)


def _log_metrics(run: Run, state: TrainingState, tally: _Tally, lr: float, gate: dict[str, float]) -> None:
    """The window's metric line, to the trackers and metrics.jsonl; then a new window starts."""
    elapsed = time.perf_counter() - tally.window_start
    metrics = {
        "loss": sum(tally.window_losses) / len(tally.window_losses), "lr": lr,
        **{f"g_{m}": gate[m] for m in MODALITIES},
        "samples_per_second": tally.window_samples / elapsed, "skipped_samples": state.skipped,
    }  # fmt: skip
    coverage = {f"gate_coverage_{m}": shares for m, shares in coverage_shares(tally.window_coverage).items()}
    run.accelerator.log({**metrics, **_tenths(coverage)}, step=state.step)
    if run.accelerator.is_main_process:
        with open(run.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": state.step, **metrics, **coverage}) + "\n")
    tally.new_window()


def _data_gave_out(
    error: FlexIPError, run: Run, model, optimizer, adapter: FlexIPAdapter, state: TrainingState,
    stepped: tuple[int, dict], stop: StopSignals,
) -> FlexIPError:  # fmt: skip
    """The error to raise when the data gives out (too many unreadable samples in a row), after saving the steps
    done. With several processes the others wait in the step's all-reduce, so only a lone process can save."""
    if run.accelerator.num_processes == 1 and state.step:
        state.samples, places = stepped
        with stop.saving():
            checkpoint_and_export(run, model, optimizer, adapter, state, places)
    # From a worker process, torch puts the worker's traceback before the message's own line.
    line = str(error).strip().splitlines()[-1]
    return FlexIPError(line.removeprefix(f"{FlexIPError.__module__}.FlexIPError: "))


def _start_records(run: Run) -> None:
    """The run's resolved config.yaml (main process) and its trackers, which record the config too."""
    if run.accelerator.is_main_process:
        atomic_write_bytes(run.run_dir / "config.yaml", config_to_yaml(run.config).encode())
    run.accelerator.init_trackers("flexip", config=_flat(dataclasses.asdict(run.config)))


def _micro_step(run: Run, built: Built, model, optimizer, state: TrainingState, batch: dict, generator):
    """One micro-batch through accelerate's canonical step (accumulate, backward, step: the optimizer steps at
    the accumulation's end); returns its loss, and each sample's g and modality."""
    config, accelerator = run.config, run.accelerator
    generator.manual_seed(_batch_seed(config.seed, batch["positions"][0]))
    with accelerator.accumulate(model):
        encoded = built.source.encode(built.models, batch, config.dropout, generator)
        loss, g = model(encoded, generator)
        set_learning_rate(optimizer, learning_rate(config, state.step))  # DeepSpeed steps in backward
        accelerator.backward(loss)
        if config.max_grad_norm and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(built.adapter.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss, g, encoded.modality


def loop(run: Run, built: Built, model, optimizer, state: TrainingState) -> bool:
    """Optimizer steps until `max_steps` or a stop signal; returns whether a signal stopped it."""
    config, accelerator, adapter = run.config, run.accelerator, built.adapter
    samples_per_batch = config.batch_size * accelerator.num_processes
    loader = data_loader(built.source, accelerator, state)
    references = validation_references(validation_pairs(built.source))
    # Each lane's readers after the batches consumed (streaming); the checkpoints record the lanes, which a
    # resume keeps.
    places = dict(state.stream.get("places", {}))
    if built.source.lanes is not None:
        state.stream["lanes"] = built.source.lanes.count
    _start_records(run)

    generator = torch.Generator(accelerator.device)
    model.train()  # the frozen UNet too: it has no dropout, and diffusers checkpoints activations only in train mode
    progress = tqdm(total=config.max_steps, initial=state.step, desc="training", unit="step",
                    disable=not accelerator.is_local_main_process)  # fmt: skip
    tally, stopping = _Tally(accelerator.device), False
    stepped = state.samples, dict(places)  # where the stream stood after the last optimizer step
    with StopSignals() as stop, _batches(loader) as batches:
        while state.step < config.max_steps:
            try:
                batch = next(batches)
            except FlexIPError as e:
                error = _data_gave_out(e, run, model, optimizer, adapter, state, stepped, stop)
                progress.close()  # before the error's line
                raise error from e
            for message in batch["skipped"]:
                logger.warning(f"skipped an unreadable training pair: {message}", main_process_only=False)
            tally.skipped += len(batch["skipped"])
            places.update(batch.get("lanes", {}))
            loss, g, modality = _micro_step(run, built, model, optimizer, state, batch, generator)
            state.samples += samples_per_batch
            tally.add(loss, g, modality, samples_per_batch)
            if not accelerator.sync_gradients:
                continue

            state.step += 1
            step_loss, skipped, stopping = tally.end_step(accelerator, stop.requested)
            state.skipped += skipped
            stepped = state.samples, dict(places)
            progress.update(1)
            gate = adapter.gate.learned_values()
            progress.set_postfix(loss=f"{step_loss:.4f}", **{f"g_{m}": f"{gate[m]:.2f}" for m in MODALITIES})
            last = state.step == config.max_steps
            if state.step % config.log_every == 0 or last:
                _log_metrics(run, state, tally, optimizer.param_groups[0]["lr"], gate)
            # The checkpoint first: whatever happens while sampling the contact sheet, the step is kept.
            if stopping or state.step % config.checkpoint_every == 0 or last:
                with stop.saving():
                    checkpoint_and_export(run, model, optimizer, adapter, state, places)
            if state.step % config.validation.every == 0 or last:
                validate(run, built, references, state.step)
            if stopping:
                break
    progress.close()
    return stopping
