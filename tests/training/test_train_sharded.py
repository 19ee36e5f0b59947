"""Sharded training (sharded.py): the shipped accelerate configs as accelerate reads them, what `prepare` hands
accelerate's plugins, and the FSDP2 and DeepSpeed ZeRO-2 checkpoint paths run for real on two gloo CPU processes
(DeepSpeed's only where it is installed: it is no flexip dependency). accelerate enables FSDP and DeepSpeed only
on accelerators, so the whole `flexip train` under them runs in bench/train_sharded.py, on GPUs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
import torch.multiprocessing as mp
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from fixtures import TINY_MODELS, train_on_the_kit
from flexip.errors import FlexIPError
from flexip.models.adapter import FlexIPAdapter
from flexip.training.config import TrainConfig
from flexip.training.sharded import check_strategy, prepare

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "accelerate"


def launch_environment(name: str) -> tuple[ClusterConfig, dict[str, str]]:
    """The config file `name`, and the environment `accelerate launch --config_file` gives each process."""
    path = CONFIGS / f"{name}.yaml"
    args = launch_command_parser().parse_args(["--config_file", str(path), "--num_processes", "2", "-m", "flexip"])
    args, defaults, _ = _validate_launch_command(args)
    if defaults.distributed_type == DistributedType.DEEPSPEED:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
        return defaults, prepare_deepspeed_cmd_env(args)[1]
    return defaults, prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name", ["ddp", "deepspeed-zero2", "fsdp"])
def test_each_config_says_how_to_launch_it_and_leaves_the_training_switches_to_the_training_config(name):
    path = CONFIGS / f"{name}.yaml"
    header = path.read_text().split("\ncompute_environment")[0]
    assert f"accelerate launch --config_file configs/accelerate/{name}.yaml" in header
    assert all(flag in header for flag in ("--num_machines", "--machine_rank", "--main_process_ip"))
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    # Mixed precision, accumulation and clipping belong to the training config (sharded.prepare hands them on).
    assert config.mixed_precision is None
    assert not {"gradient_accumulation_steps", "gradient_clipping"} & set(config.deepspeed_config)


def test_the_deepspeed_config_is_zero_2_with_nothing_offloaded_and_fills_in_from_the_training_config():
    config, env = launch_environment("deepspeed-zero2")
    assert config.distributed_type == DistributedType.DEEPSPEED
    assert config.deepspeed_config["deepspeed_multinode_launcher"] == "standard"  # per-machine launch, as DDP
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()  # accelerate's own reading of the launch environment; needs no DeepSpeed
    ds = plugin.deepspeed_config
    assert plugin.zero_stage == 2 and ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none"
    assert ds["zero_optimization"]["offload_param"]["device"] == "none"
    assert ds["gradient_accumulation_steps"] == "auto" and ds["gradient_clipping"] == "auto"
    assert ds["train_micro_batch_size_per_gpu"] == "auto"  # sharded.prepare sets batch_size and max_grad_norm


def test_the_fsdp_config_is_fsdp2_with_one_group_and_nothing_offloaded():
    config, env = launch_environment("fsdp")
    assert config.distributed_type == DistributedType.FSDP
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.auto_wrap_policy is None  # NO_WRAP: the adapter is the root's one group
    assert plugin.reshard_after_forward is True
    assert type(plugin.cpu_offload).__name__ == "OffloadPolicy"  # the base policy: no offload
    assert not plugin.activation_checkpointing and not plugin.cpu_ram_efficient_loading
    assert plugin.ignored_modules is None  # sharded.prepare leaves the UNet out itself


class _Accelerator:
    """What sharded.prepare reads of an Accelerator under FSDP or DeepSpeed (which accelerate enables only on
    accelerators): its distributed type, the plugin its state holds, and `prepare`, here returning the model
    and optimizer as they are. The plugins are accelerate's own, read from the launch environment."""

    def __init__(self, distributed_type: DistributedType, **plugin):
        self.distributed_type = distributed_type
        self.state = SimpleNamespace(**plugin)

    def prepare(self, model, optimizer):
        return model, optimizer


def _launched_plugin(name: str, mixed_precision: str):
    """accelerate's plugin for config `name`, with the mixed precision set as AcceleratorState sets it."""
    _, env = launch_environment(name)
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin() if name.startswith("deepspeed") else FullyShardedDataParallelPlugin()
    plugin.set_mixed_precision(mixed_precision)
    return plugin


@pytest.mark.parametrize("max_grad_norm", [0.0, 0.5])
def test_prepare_gives_deepspeed_the_batch_size_and_the_clipping_of_the_training_config(max_grad_norm):
    plugin = _launched_plugin("deepspeed-zero2", "bf16")
    config = TrainConfig(batch_size=3, max_grad_norm=max_grad_norm)
    prepare(_Accelerator(DistributedType.DEEPSPEED, deepspeed_plugin=plugin), torch.nn.Linear(1, 1), None, config)
    ds = plugin.deepspeed_config
    # With no DataLoader prepared, accelerate's DeepSpeed prepare refuses an "auto" micro-batch; it takes this one.
    assert ds["train_micro_batch_size_per_gpu"] == 3
    # What it then fills in (Accelerator._prepare_deepspeed), on 2 processes.
    plugin.fill_match("gradient_accumulation_steps", must_match=False, gradient_accumulation_steps=1)
    plugin.deepspeed_config_process(must_match=False, gradient_clipping=1.0, train_micro_batch_size_per_gpu=3,
                                    train_batch_size=3 * 2)  # fmt: skip
    assert ds["train_batch_size"] == 6
    assert ds["gradient_clipping"] == max_grad_norm  # not accelerate's default 1.0
    assert ds["bf16"]["enabled"] is True


def test_prepare_leaves_the_unet_out_of_fsdp_and_averages_gradients_in_float32(tiny_models):
    plugin = _launched_plugin("fsdp", "bf16")
    model, _ = _training_model(tiny_models.root, perturb=0.0)
    prepare(_Accelerator(DistributedType.FSDP, fsdp_plugin=plugin), model, None, TrainConfig())
    assert plugin.ignored_modules == [model.unet]
    policy = plugin.mixed_precision_policy
    assert policy.param_dtype == torch.bfloat16  # computes as mixed_precision says
    assert policy.reduce_dtype == torch.float32 and policy.output_dtype is None


def test_fsdp1_and_zero3_are_refused_in_one_line():
    fsdp1 = FullyShardedDataParallelPlugin(fsdp_version=1)
    with pytest.raises(FlexIPError, match="fsdp_version 1 is not supported"):
        check_strategy(_Accelerator(DistributedType.FSDP, fsdp_plugin=fsdp1))
    with pytest.raises(FlexIPError, match="zero_stage 3 is not supported"):
        check_strategy(_Accelerator(DistributedType.DEEPSPEED, deepspeed_plugin=DeepSpeedPlugin(zero_stage=3)))


def test_a_checkpoint_resumes_only_under_the_strategy_that_wrote_it(tmp_path, tiny_models, capsys):
    run = tmp_path / "run"
    assert train_on_the_kit(tiny_models, run, "--max-steps", "1") == 0
    record_file = run / "checkpoints" / "checkpoint-00000001" / "training_state.json"
    record = json.loads(record_file.read_text())
    assert "strategy" not in record  # one process and DDP write what they wrote before sharding existed
    record_file.write_text(json.dumps({**record, "strategy": "fsdp"}))  # as an FSDP2 run writes it
    capsys.readouterr()
    assert train_on_the_kit(tiny_models, run, "--max-steps", "2", "--resume", "latest") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "written under fsdp and this run is under ddp" in error and "configs/accelerate/" in error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    """Make this spawned process rank `rank` of a torchrun-like gloo group (its environment)."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)


def _training_model(kit: Path, perturb: float):
    """The real training module on the tiny kit: its bf16 frozen denoiser (the kit's family's: a UNet or FLUX.1's
    transformer) and its float32 adapter, the adapter's weights moved by `perturb` (a resumed model must get all
    of them back from the checkpoint)."""
    from flexip.denoisers.registry import DENOISERS
    from flexip.families.names import DENOISER_OF_FAMILY
    from flexip.models.adapter import FlexIPAdapter
    from flexip.training.objective import FlexIPTrainingModel

    adapter = FlexIPAdapter.from_pretrained(kit / "adapter")
    denoiser = DENOISERS[DENOISER_OF_FAMILY[adapter.config.base_family]]
    frozen = denoiser.model_class.from_pretrained(
        kit / "base", subfolder=denoiser.pipeline_attribute, torch_dtype=torch.bfloat16
    )
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.add_(perturb)
    scheduler = denoiser.scheduler_class().from_pretrained(kit / "base", subfolder="scheduler")
    return FlexIPTrainingModel(frozen.requires_grad_(False), adapter, scheduler), adapter


def _batch(adapter, step: int, rank: int, pooled: int | None = None):
    """Step `step`'s encoded micro-batch of process `rank` (each process its own data), in bf16; with `pooled`,
    FLUX.1's pooled text of that width."""
    from flexip.training.objective import EncodedBatch

    generator, config = torch.Generator().manual_seed(1000 * step + rank), adapter.config

    def draw(*shape):
        return torch.randn(*shape, generator=generator).to(torch.bfloat16)

    latents, text = draw(2, 4, 8, 8), draw(2, 7, config.cross_attention_dim)
    clip, dino = draw(2, config.clip_embed_dim), draw(2, 5, config.dino_hidden_dim)
    added = {"pooled_projections": draw(2, pooled)} if pooled else None
    return EncodedBatch(latents, text, added, clip, dino, torch.tensor([0, 1]), torch.tensor([False, False]))


def _fsdp_worker(rank: int, world: int, port: int, kit: Path, directory: Path) -> None:
    """Train 2 steps under FSDP2, checkpoint, train 2 more; then a fresh, perturbed model resumed from the
    checkpoint must train those 2 steps to the same losses and weights. Failures are raised (the process exits
    non-zero)."""
    _join(rank, world, port)
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from flexip.errors import FlexIPError
    from flexip.models.adapter import FlexIPAdapter
    from flexip.models.config_file import WEIGHTS_NAME
    from flexip.training.config import TrainConfig
    from flexip.training.optimization import build_optimizer
    from flexip.training.sharded import fsdp_adapter_state, load_fsdp_state, save_fsdp_state, write_adapter

    accelerator = Accelerator(cpu=True)  # gloo; supplies the process index, step counter and scaler
    assert accelerator.num_processes == world

    def build(perturb: float):
        model, adapter = _training_model(kit, perturb)
        # What accelerate's FSDP2 prepare does with fsdp.yaml and sharded.prepare's settings under bf16.
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        fully_shard(model, ignored_params=set(model.unet.parameters()), mp_policy=policy)
        optimizer = build_optimizer(adapter, TrainConfig(learning_rate=1e-2))
        return model, adapter, AcceleratedOptimizer(optimizer, device_placement=False)  # as prepare returns it

    def train_step(step: int) -> float:
        pooled = model.unet.config.get("pooled_projection_dim")
        loss, _ = model(_batch(adapter, step, rank, pooled), torch.Generator().manual_seed(step))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    model, adapter, optimizer = build(perturb=0.0)
    for step in (1, 2):
        train_step(step)
    save_fsdp_state(accelerator, model, optimizer, directory)
    after_save = torch.rand(3)  # the global RNG, as saved in random_states_<rank>.pkl
    at_checkpoint = fsdp_adapter_state(model)
    if accelerator.is_main_process:
        write_adapter(adapter.config, at_checkpoint, directory / "adapter")
    accelerator.wait_for_everyone()
    expected = [train_step(step) for step in (3, 4)]
    expected_weights = fsdp_adapter_state(model)

    model, adapter, optimizer = build(perturb=0.5)
    torch.manual_seed(12345)
    load_fsdp_state(accelerator, model, optimizer, adapter, directory)
    assert torch.equal(torch.rand(3), after_save)
    resumed = [train_step(step) for step in (3, 4)]
    assert resumed == expected, (resumed, expected)
    resumed_weights = fsdp_adapter_state(model)
    if accelerator.is_main_process:
        assert set(at_checkpoint) == set(FlexIPAdapter(adapter.config).state_dict())  # the whole adapter, gathered
        assert all(tensor.dtype == torch.float32 for tensor in at_checkpoint.values())
        assert resumed_weights.keys() == expected_weights.keys()
        assert all(torch.equal(resumed_weights[name], expected_weights[name]) for name in expected_weights)
        optimizer_state = torch.load(directory / "optimizer.bin", weights_only=True)
        assert set(optimizer_state["state"]) == {f"adapter.{name}" for name, _ in adapter.named_parameters()}
        # The exported adapter loads as `flexip generate --adapter` loads it, with the checkpoint's weights.
        exported = FlexIPAdapter.from_pretrained(directory / "adapter")
        assert all(torch.equal(exported.state_dict()[name], at_checkpoint[name]) for name in at_checkpoint)
    else:
        assert at_checkpoint == {}  # gathered on the main process only
    accelerator.wait_for_everyone()

    # An adapter file of another architecture is refused in one line before any collective.
    if accelerator.is_main_process:
        from safetensors.torch import load_file, save_file

        weights = load_file(directory / "adapter" / WEIGHTS_NAME)
        weights.pop(min(weights))
        save_file(weights, directory / "adapter" / WEIGHTS_NAME)
    accelerator.wait_for_everyone()
    try:
        load_fsdp_state(accelerator, model, optimizer, adapter, directory)
    except FlexIPError as e:
        assert "does not fit the configured one" in str(e)
    else:
        raise AssertionError("a checkpoint with another adapter was loaded")
    accelerator.end_training()


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_fsdp2_checkpoint_holds_only_the_adapter_and_resumes_exactly_on_two_gloo_processes(tmp_path, request, family):
    kit = request.getfixturevalue(TINY_MODELS[family])
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    mp.spawn(_fsdp_worker, args=(2, _free_port(), kit.root, checkpoint), nprocs=2)
    files = sorted(str(f.relative_to(checkpoint)) for f in checkpoint.rglob("*") if f.is_file())
    assert files == [
        "adapter/flexip_adapter.safetensors", "adapter/flexip_config.json", "optimizer.bin",
        "random_states_0.pkl", "random_states_1.pkl",
    ]  # fmt: skip: no denoiser, no accelerate model file


def _deepspeed_worker(rank: int, world: int, port: int, kit: Path, directory: Path) -> None:
    """The same under DeepSpeed ZeRO-2 in bf16, the engine saved and loaded as accelerate's `save_state` and
    `load_state` call it with sharded.py's arguments."""
    _join(rank, world, port)
    import deepspeed

    from flexip.training.config import TrainConfig
    from flexip.training.optimization import build_optimizer
    from flexip.training.sharded import deepspeed_adapter_state, write_adapter

    deepspeed.init_distributed("gloo")
    config = {
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "train_batch_size": 2 * world,
        "zero_optimization": {"stage": 2}, "bf16": {"enabled": True}, "gradient_clipping": 0.0,
        "zero_allow_untested_optimizer": True, "steps_per_print": 10**9,
    }  # fmt: skip

    def build(perturb: float):
        model, adapter = _training_model(kit, perturb)
        optimizer = build_optimizer(adapter, TrainConfig(learning_rate=1e-2))
        return deepspeed.initialize(model=model, optimizer=optimizer, config=config)[0], adapter

    def train_step(step: int) -> float:
        loss, _ = engine(_batch(adapter, step, rank), torch.Generator().manual_seed(step))
        engine.backward(loss)
        engine.step()
        return loss.item()

    engine, adapter = build(perturb=0.0)
    for step in (1, 2):
        train_step(step)
    engine.save_checkpoint(str(directory), "pytorch_model", exclude_frozen_parameters=True)
    at_checkpoint = deepspeed_adapter_state(adapter, keep=True)
    if rank == 0:
        write_adapter(adapter.config, at_checkpoint, directory / "adapter")
    expected = [train_step(step) for step in (3, 4)]
    expected_weights = deepspeed_adapter_state(adapter, keep=True)

    engine, adapter = build(perturb=0.5)
    engine.load_checkpoint(str(directory), "pytorch_model", load_module_strict=False)
    resumed = [train_step(step) for step in (3, 4)]
    assert resumed == expected, (resumed, expected)
    resumed_weights = deepspeed_adapter_state(adapter, keep=True)
    assert all(torch.equal(resumed_weights[name], expected_weights[name]) for name in expected_weights)
    # The module holds bf16 copies; the export is the float32 masters.
    assert next(adapter.parameters()).dtype == torch.bfloat16
    assert all(tensor.dtype == torch.float32 for tensor in at_checkpoint.values())


def _elements(value) -> int:
    """The number of tensor elements anywhere in `value` (nested dicts, lists, tuples)."""
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, dict):
        return sum(_elements(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_elements(item) for item in value)
    return 0


def test_deepspeed_zero2_checkpoint_holds_no_frozen_weights_and_resumes_exactly(tmp_path, tiny_models):
    pytest.importorskip("deepspeed", reason="DeepSpeed is no flexip dependency; `pip install deepspeed` to run this")
    checkpoint = tmp_path / "checkpoint"
    mp.spawn(_deepspeed_worker, args=(2, _free_port(), tiny_models.root, checkpoint), nprocs=2)
    adapter = FlexIPAdapter.from_pretrained(checkpoint / "adapter")
    engine_files = [torch.load(f, map_location="cpu", weights_only=False) for f in checkpoint.rglob("*.pt")]
    module = torch.load(checkpoint / "pytorch_model" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert set(module) == {f"adapter.{name}" for name in adapter.state_dict()}  # no UNet
    # The module's bf16 copy, the fp32 masters and AdamW's two moments (and a few scalars): four adapters' worth.
    assert sum(_elements(state) for state in engine_files) <= 4 * sum(p.numel() for p in adapter.parameters()) + 64


def test_the_gpu_script_dry_run_prints_every_launch_it_would_make(tmp_path):
    script = ROOT / "bench" / "train_sharded.py"
    finished = subprocess.run(
        [sys.executable, str(script), "--dry-run", "--out", str(tmp_path / "bench"), "--num-processes", "2"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-2000:]
    lines = finished.stdout.splitlines()
    for name in ("ddp", "deepspeed-zero2", "fsdp"):
        runs = [line for line in lines if f"configs/accelerate/{name}.yaml" in line]
        assert len(runs) == 3, runs  # uninterrupted, killed, resumed
        assert sum("--resume latest" in line for line in runs) == 1
    assert not (tmp_path / "bench").exists()  # a dry run writes nothing
