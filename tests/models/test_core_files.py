"""Adapter directories, encoded references, and the tiny-model kit's command."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import MotionAdapter, StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from flexip import EncodedReference, FlexIPAdapter, FlexIPError, ReferenceEncoder
from flexip.cli import main
from flexip.models.config_file import CONFIG_NAME, WEIGHTS_NAME


@pytest.fixture
def adapter_dir(tiny_models, tmp_path):
    return shutil.copytree(tiny_models.adapter, tmp_path / "adapter")


def test_adapter_config_records_sizes_and_encoders(tiny_models):
    config = json.loads((tiny_models.adapter / CONFIG_NAME).read_text())
    assert config["format_version"] == 1
    assert config["cross_attention_dim"] == 32
    assert config["image_encoder"] == "../image_encoder" and config["dino_encoder"] == "../dinov2"
    assert len(config["layers"]) == 4
    adapter = FlexIPAdapter.from_pretrained(tiny_models.adapter)
    assert adapter.resolve_model(config["image_encoder"]) == str(tiny_models.image_encoder.resolve())
    assert adapter.resolve_model("openai/clip-vit-large-patch14") == "openai/clip-vit-large-patch14"
    encoder = ReferenceEncoder.from_pretrained(
        adapter.resolve_model(config["image_encoder"]), adapter.resolve_model(config["dino_encoder"])
    )
    assert (encoder.clip_embed_dim, encoder.dino_hidden_dim) == (config["clip_embed_dim"], config["dino_hidden_dim"])


def test_adapter_weights_are_safetensors_with_gate_logits(tiny_models):
    state = load_file(tiny_models.adapter / WEIGHTS_NAME)
    assert torch.allclose(torch.sigmoid(state["gate.logits"]), torch.tensor([0.8, 0.2]))
    assert any(name.startswith("layers.") and name.endswith("to_k_preservation.weight") for name in state)
    # The kit stands in for a trained adapter: its branch values are not a fresh adapter's zeros.
    values = [tensor for name, tensor in state.items() if ".to_v_" in name]
    assert values and all(tensor.any() for tensor in values)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / CONFIG_NAME).unlink(), "flexip_config.json not found"),
        (lambda d: (d / WEIGHTS_NAME).unlink(), "flexip_adapter.safetensors not found"),
        (lambda d: (d / CONFIG_NAME).write_text("{not json"), "is not valid JSON"),
        (lambda d: (d / WEIGHTS_NAME).write_bytes(b"\x00" * 20), "not a readable safetensors file"),
    ],
)
def test_broken_adapter_directories_fail_clearly(adapter_dir, damage, message):
    damage(adapter_dir)
    with pytest.raises(FlexIPError, match=message):
        FlexIPAdapter.from_pretrained(adapter_dir)


def _edit_config(adapter_dir, **changes):
    config = json.loads((adapter_dir / CONFIG_NAME).read_text())
    config.update(changes)
    (adapter_dir / CONFIG_NAME).write_text(json.dumps(config))


def test_unknown_config_key_is_named(adapter_dir):
    _edit_config(adapter_dir, dino_layr=-1)
    with pytest.raises(FlexIPError, match="unknown key.*dino_layr"):
        FlexIPAdapter.from_pretrained(adapter_dir)


def test_unknown_format_version_is_refused(adapter_dir):
    _edit_config(adapter_dir, format_version=99)
    with pytest.raises(FlexIPError, match="format_version 99 is not supported"):
        FlexIPAdapter.from_pretrained(adapter_dir)


def test_tensor_of_wrong_shape_is_named(adapter_dir):
    state = load_file(adapter_dir / WEIGHTS_NAME)
    state["preservation.queries"] = torch.zeros(1, 3, 32)
    save_file(state, adapter_dir / WEIGHTS_NAME)
    with pytest.raises(FlexIPError, match=r"preservation.queries has shape \(1, 3, 32\).*\(1, 4, 32\)"):
        FlexIPAdapter.from_pretrained(adapter_dir)


def test_save_replaces_an_existing_directory_atomically(tiny_models, tmp_path):
    adapter = FlexIPAdapter.from_pretrained(tiny_models.adapter)
    target = tmp_path / "out"
    adapter.save_pretrained(target)
    with torch.no_grad():
        adapter.gate.logits.add_(1.0)
    adapter.save_pretrained(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old copies left
    assert torch.equal(FlexIPAdapter.from_pretrained(target).gate.logits, adapter.gate.logits)


def test_encoded_reference_round_trip(tmp_path):
    reference = EncodedReference(torch.randn(2, 32), torch.randn(2, 17, 32))
    reference.save(tmp_path / "ref.safetensors")
    loaded = EncodedReference.load(tmp_path / "ref.safetensors")
    assert torch.equal(loaded.clip_embeds, reference.clip_embeds)
    assert torch.equal(loaded.dino_tokens, reference.dino_tokens)
    save_file({"clip_embeds": torch.zeros(2, 3)}, tmp_path / "bad.safetensors")
    with pytest.raises(FlexIPError, match="missing.*dino_tokens"):
        EncodedReference.load(tmp_path / "bad.safetensors")


def test_tiny_models_command_writes_a_loadable_model_set(tmp_path, capsys):
    assert main(["tiny-models", str(tmp_path / "set"), "--seed", "3"]) == 0
    assert "motion_adapter/" in capsys.readouterr().out
    assert MotionAdapter.from_pretrained(tmp_path / "set" / "motion_adapter").config.block_out_channels == [32, 64]
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "set" / "base")
    adapter = FlexIPAdapter.from_pretrained(tmp_path / "set" / "adapter")
    adapter.check_compatible(pipe.unet)
    image = pipe("a dog", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3)


def test_model_references_name_hub_subfolders_and_local_paths(tiny_models):
    from flexip.model_paths import split_model_reference

    assert split_model_reference("h94/IP-Adapter/models/image_encoder") == ("h94/IP-Adapter", "models/image_encoder")
    assert split_model_reference("facebook/dinov2-large") == ("facebook/dinov2-large", None)
    assert split_model_reference(tiny_models.dinov2) == (str(tiny_models.dinov2), None)
    with pytest.raises(FlexIPError, match="cannot load CLIPVisionModelWithProjection from '/nonexistent/clip'"):
        ReferenceEncoder.from_pretrained("/nonexistent/clip", tiny_models.dinov2)


def test_clip_encoder_without_processor_config_uses_clip_defaults(tiny_models, tmp_path):
    clip_dir = shutil.copytree(tiny_models.image_encoder, tmp_path / "image_encoder")
    (clip_dir / "preprocessor_config.json").unlink()  # as in h94/IP-Adapter/models/image_encoder
    encoder = ReferenceEncoder.from_pretrained(clip_dir, tiny_models.dinov2)
    assert encoder.clip_processor.crop_size == {"height": 224, "width": 224}
    dino_dir = shutil.copytree(tiny_models.dinov2, tmp_path / "dinov2")
    (dino_dir / "preprocessor_config.json").unlink()
    with pytest.raises(FlexIPError, match="dinov2"):
        ReferenceEncoder.from_pretrained(tiny_models.image_encoder, dino_dir)


def test_public_api_names_resolve():
    import flexip

    assert sorted(flexip.__all__) == sorted(flexip._EXPORTS)
    for name in flexip.__all__:
        assert getattr(flexip, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        flexip.nope  # noqa: B018
