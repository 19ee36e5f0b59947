"""`train(config)`: the FlexIP training run (method.md §3) on one process or many, through accelerate.

Named phases, top to bottom (dinov2's habit): `start` the run (accelerator, generated inputs, the checkpoint to
resume), `build` the models and data, `build_optimizer`, `restore` a checkpoint, then `loop`, which checkpoints
and exports the adapter (`checkpoint_and_export`) as it goes. The loop is accelerate's canonical one (accumulate,
backward, step); around it, one all-reduce per optimizer step makes every process agree on the loss it logs,
the skipped samples and whether a signal asked to stop.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from ..atomic import atomic_write_bytes
from ..errors import FlexIPError
from ..models.adapter import FlexIPAdapter
from ..models.gate import MODALITIES
from .checkpoint import TrainingState, load_checkpoint, register_hooks, resolve_resume, save_checkpoint
from .components import FrozenModels, load_frozen_models, prepare_tiny_models
from .config import TrainConfig, config_to_yaml
from .data import MixedBatchSampler, MixedStream, PairDataset, collate, read_manifest
from .objective import FlexIPTrainingModel, encode_batch
from .validation import png_bytes, sweep, sweep_sheet, validation_references

logger = get_logger(__name__)

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Tracker -> (its module, what to install for it): TensorBoard comes with the `train` extra.
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "'flexip[train]'"), "wandb": ("wandb", "wandb")}


@dataclass
class TrainResult:
    run_dir: Path
    state: TrainingState
    interrupted: bool  # a signal stopped the run after saving a checkpoint
    adapter: FlexIPAdapter  # trained, attached to models.unet
    models: FrozenModels  # what it was trained with, ready to generate from


class StopSignals:
    """SIGINT/SIGTERM set `requested` instead of killing the process, so the loop can save first.

    A second signal gets the default behaviour back (a second Ctrl-C kills at once).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> StopSignals:  # noqa: PYI034 (Self needs Python 3.11)
        self.requested = 0
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = signum
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _ignore_stop_signals(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: the workers must live on while the main process saves.
    for s in StopSignals.SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def _batch_seed(seed: int, position: int) -> int:
    """The noise/timestep/dropout/gate seed of the micro-batch starting at stream `position`."""
    return int(np.random.SeedSequence([seed, 1, position]).generate_state(1, np.uint64)[0] >> 1)


def _portable(reference: str) -> str:
    """Local paths become absolute, so the exported adapter finds its encoders from anywhere."""
    return str(Path(reference).resolve()) if Path(reference).exists() else reference


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
    """Write what a tiny config asks to be generated (the tiny model set and its small data set) if absent."""
    if config.model.tiny_models:
        prepare_tiny_models(config.model)


def _build_adapter(config: TrainConfig, unet, encoder) -> FlexIPAdapter:
    model = config.model
    return FlexIPAdapter.for_unet(
        unet, encoder.clip_embed_dim, encoder.dino_hidden_dim,
        base_model=_portable(model.base),
        image_encoder=_portable(model.image_encoder), dino_encoder=_portable(model.dino_encoder),
        dino_layer=model.dino_layer, preservation=dataclasses.asdict(model.preservation),
        personalization=dataclasses.asdict(model.personalization), gate=dataclasses.asdict(model.gate),
    )  # fmt: skip


def build_optimizer(adapter: FlexIPAdapter, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the adapter; the gate logits get no weight decay (it would pull every g towards 0.5)."""
    gate = [adapter.gate.logits]
    rest = [p for p in adapter.parameters() if p is not adapter.gate.logits]
    groups = [{"params": rest, "weight_decay": config.weight_decay}, {"params": gate, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate)


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
    pairs: list
    stream: MixedStream


def train(config: TrainConfig, resume: str | None = None) -> TrainResult:
    """Train (or resume) the run in `config.output_dir`; returns its final state."""
    run = start(config, resume)
    built = build(run)
    model, optimizer = run.accelerator.prepare(built.model, build_optimizer(built.adapter, config))
    register_hooks(run.accelerator, built.adapter)
    state = restore(run, resume)
    interrupted = loop(run, built, model, optimizer, state)
    if state.skipped:
        logger.warning(
            f"{state.skipped} unreadable training pairs were skipped (each is logged above with its path)"
        )
    run.accelerator.end_training()
    return TrainResult(run.run_dir, state, interrupted, built.adapter.eval(), built.models)


def start(config: TrainConfig, resume: str | None) -> Run:
    """The accelerator, the inputs a tiny config asks for, and the checkpoint `resume` names."""
    for tracker in config.log_with:
        module, install = TRACKER_PACKAGES[tracker]
        if importlib.util.find_spec(module) is None:
            raise FlexIPError(f"config log_with: {tracker} is not installed; `pip install {install}` or remove it")
    run_dir = Path(config.output_dir)
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
        _prepare_inputs(config)
    return Run(config, accelerator, run_dir, resolve_resume(resume, run_dir) if resume else None)


def build(run: Run) -> Built:
    """The frozen models on the device, a fresh adapter attached to the UNet, and the data stream."""
    config = run.config
    pairs = read_manifest(config.data.manifest)
    stream = MixedStream([p.modality for p in pairs], config.data.video_fraction, config.seed)
    models = load_frozen_models(config.model, DTYPES[config.mixed_precision])
    for module in (models.text_encoder, models.vae, models.unet, models.encoder):
        module.to(run.accelerator.device)
    set_seed(config.seed)  # the adapter starts from the same weights on every process and every run
    adapter = _build_adapter(config, models.unet, models.encoder)
    if config.gradient_checkpointing:
        models.unet.enable_gradient_checkpointing()
    model = FlexIPTrainingModel(
        models.unet, adapter, models.noise_scheduler, config.min_snr_gamma, config.subject_loss_weight
    )
    return Built(models, adapter, model, pairs, stream)


def restore(run: Run, resume: str | None) -> TrainingState:
    """The state of the checkpoint to resume (optimizer, RNG, stream position), or a fresh one."""
    if run.resume_from is not None:
        state = load_checkpoint(run.accelerator, run.resume_from)
        logger.info(f"resumed from {run.resume_from} at step {state.step}")
        return state
    if resume:
        logger.info(f"no checkpoint in {run.run_dir / 'checkpoints'} yet: starting at step 0")
    return TrainingState()


def data_loader(run: Run, built: Built, state: TrainingState) -> torch.utils.data.DataLoader:
    """Batches from the stream position `state` reached, this process's share of them."""
    config, accelerator = run.config, run.accelerator
    sampler = MixedBatchSampler(
        built.stream, config.batch_size, state.samples, accelerator.process_index, accelerator.num_processes
    )
    dataset = PairDataset(
        built.pairs, config.data.resolution, config.seed, config.data.swap_captions,
        target_masks=config.subject_loss_weight > 0,
    )  # fmt: skip
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=config.data.num_workers,
        worker_init_fn=_ignore_stop_signals, pin_memory=accelerator.device.type == "cuda",
    )  # fmt: skip


def checkpoint_and_export(run: Run, adapter: FlexIPAdapter, state: TrainingState) -> None:
    """A full checkpoint (all processes), then the adapter directory `flexip generate --adapter` loads."""
    path = save_checkpoint(run.accelerator, adapter, state, run.run_dir, run.config.keep_checkpoints)
    if run.accelerator.is_main_process:
        adapter.save_pretrained(run.run_dir / "adapter")
    logger.info(f"step {state.step}: saved {path} and {run.run_dir / 'adapter'}")


def validate(run: Run, built: Built, references: list, step: int) -> None:
    """The dial's contact sheet at this step (main process), written to samples/step-N.png."""
    accelerator, adapter = run.accelerator, built.adapter
    if accelerator.is_main_process:
        adapter.eval()
        with accelerator.autocast():
            rows = sweep(
                built.models, adapter, references, run.config.validation, run.config.data.resolution, accelerator.device
            )  # fmt: skip
        sheet = sweep_sheet(references, run.config.validation.prompts, run.config.validation.preservation, rows)
        atomic_write_bytes(run.run_dir / "samples" / f"step-{step:08d}.png", png_bytes(sheet))
        adapter.train()
    accelerator.wait_for_everyone()


def loop(run: Run, built: Built, model, optimizer, state: TrainingState) -> bool:
    """Optimizer steps until `max_steps` or a stop signal; returns whether a signal stopped it."""
    config, accelerator, adapter = run.config, run.accelerator, built.adapter
    device, world = accelerator.device, accelerator.num_processes
    loader = data_loader(run, built, state)
    references = validation_references(built.pairs)
    if accelerator.is_main_process:
        atomic_write_bytes(run.run_dir / "config.yaml", config_to_yaml(config).encode())
    accelerator.init_trackers("flexip", config=_flat(dataclasses.asdict(config)))

    generator = torch.Generator(device)
    model.train()  # the frozen UNet too: it has no dropout, and diffusers checkpoints activations only in train mode
    progress = tqdm(total=config.max_steps, initial=state.step, desc="training", unit="step",
                    disable=not accelerator.is_local_main_process)  # fmt: skip
    window_start, window_samples, window_losses = time.perf_counter(), 0, []
    loss_sum, micro_steps, skipped = torch.zeros((), device=device), 0, 0
    interrupted = False
    batches = iter(loader)
    with StopSignals() as stop:
        while state.step < config.max_steps:
            batch = next(batches)
            for message in batch["skipped"]:
                logger.warning(f"skipped an unreadable training pair: {message}", main_process_only=False)
            skipped += len(batch["skipped"])
            generator.manual_seed(_batch_seed(config.seed, batch["positions"][0]))
            with accelerator.accumulate(model):
                encoded = encode_batch(built.models, batch, config.dropout, generator)
                loss = model(encoded, generator)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.samples += config.batch_size * world
            window_samples += config.batch_size * world
            loss_sum += loss.detach().float()
            micro_steps += 1
            if not accelerator.sync_gradients:
                continue

            state.step += 1
            # The step's one collective: the mean loss, the skipped samples and any stop request, over all processes.
            counts = torch.tensor([micro_steps, skipped, stop.requested], device=device, dtype=torch.float32)
            totals = accelerator.reduce(torch.cat([loss_sum[None], counts]), reduction="sum")
            step_loss, state.skipped, stopping = (
                float(totals[0] / totals[1]),
                state.skipped + int(totals[2]),
                totals[3] > 0,
            )
            window_losses.append(step_loss)
            loss_sum.zero_()
            micro_steps = skipped = 0
            progress.update(1)
            gate = adapter.gate.learned_values()
            progress.set_postfix(loss=f"{step_loss:.4f}", **{f"g_{m}": f"{gate[m]:.2f}" for m in MODALITIES})
            last = state.step == config.max_steps
            if state.step % config.log_every == 0 or last:
                elapsed = time.perf_counter() - window_start
                metrics = {
                    "loss": sum(window_losses) / len(window_losses), "lr": optimizer.param_groups[0]["lr"],
                    **{f"g_{m}": gate[m] for m in MODALITIES},
                    "samples_per_second": window_samples / elapsed, "skipped_samples": state.skipped,
                }  # fmt: skip
                accelerator.log(metrics, step=state.step)
                if accelerator.is_main_process:
                    with open(run.run_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps({"step": state.step, **metrics}) + "\n")
                window_start, window_samples, window_losses = time.perf_counter(), 0, []
            if state.step % config.validation.every == 0 or last:
                validate(run, built, references, state.step)
            if stopping:
                interrupted = True
                checkpoint_and_export(run, adapter, state)
                break
            if state.step % config.checkpoint_every == 0 or last:
                checkpoint_and_export(run, adapter, state)
    progress.close()
    return interrupted
