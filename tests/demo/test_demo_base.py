"""The demo base model: its text side tells words apart untrained, and a shortened training run produces a
model set that diffusers and transformers load and run like any Stable Diffusion."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import (
    BitImageProcessor,
    CLIPImageProcessor,
    CLIPVisionModelWithProjection,
    Dinov2Model,
)

from recipes.demo.evaluate_base import main as evaluate_main
from recipes.demo.text import build_text_encoder, build_tokenizer
from recipes.demo.train_base import main as train_main
from recipes.demo.world import vocabulary


def test_every_word_is_one_token_and_the_text_encoder_separates_words():
    tokenizer = build_tokenizer()
    encoder = build_text_encoder(tokenizer)
    words = vocabulary()
    ids = [tokenizer(word, add_special_tokens=False).input_ids for word in words]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(words)
    # Each word alone between BOS and padding: its output vector must be far from every other word's.
    batch = tokenizer(words, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    states = torch.nn.functional.normalize(encoder(batch.input_ids)[0][:, 1], dim=1)
    similarity = states @ states.T - torch.eye(len(words))
    assert similarity.max() < 0.5


def test_vocab_files_tokenize_like_the_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    from recipes.demo.text import write_vocab_files

    tokenizer = build_tokenizer()
    write_vocab_files(tokenizer, tmp_path)
    again = CLIPTokenizer(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"),
                          model_max_length=tokenizer.model_max_length)
    text = "a large star on the right with night background drawn in gray"
    assert again(text).input_ids == tokenizer(text).input_ids
    assert len(tokenizer(text).input_ids) == len(text.split()) + 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-base")
    summary = train_main(["--out", str(root / "model"), "--work-dir", str(root / "work"), "--samples", "32",
                          "--vae-steps", "2", "--unet-steps", "2", "--batch-size", "4", "--quiet"])
    return root, summary


def test_short_training_run_gives_a_loadable_stable_diffusion(trained):
    root, summary = trained
    assert summary["parameters"]["unet"] > 1_000_000
    pipeline = StableDiffusionPipeline.from_pretrained(root / "model" / "base").to(torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline("a small star on the left with sky background", num_inference_steps=2,
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)
    assert pipeline.vae.config.scaling_factor != 0.18215  # measured on the run's latents, not SD's constant

    clip = CLIPVisionModelWithProjection.from_pretrained(root / "model" / "image_encoder").float()
    clip_inputs = CLIPImageProcessor.from_pretrained(root / "model" / "image_encoder")(image, return_tensors="pt")
    assert clip(**clip_inputs).image_embeds.shape == (1, clip.config.projection_dim)
    dino = Dinov2Model.from_pretrained(root / "model" / "dinov2").float()
    dino_inputs = BitImageProcessor.from_pretrained(root / "model" / "dinov2")(image, return_tensors="pt")
    assert dino(**dino_inputs).last_hidden_state.shape[0] == 1


def test_weights_are_stored_in_half_precision(trained):
    root, _ = trained
    from safetensors.torch import load_file

    weights = load_file(root / "model" / "base" / "unet" / "diffusion_pytorch_model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.float16}


def test_rerun_reuses_the_trained_vae_and_refuses_another_config(trained):
    root, _ = trained
    assert (root / "work" / "vae.pt").is_file()
    with pytest.raises(SystemExit, match="another configuration"):
        train_main(["--out", str(root / "model"), "--work-dir", str(root / "work"), "--samples", "33", "--quiet"])


def test_evaluate_reports_every_scene_attribute(trained, tmp_path):
    root, _ = trained
    result = evaluate_main(["--model", str(root / "model"), "--samples", "3", "--steps", "2",
                            "--sheet", str(tmp_path / "sheet.png")])
    assert set(result["prompt_match"]) == {"subject", "background", "position", "size", "style", "mean"}
    assert all(0.0 <= value <= 1.0 for value in result["prompt_match"].values())
    assert (tmp_path / "sheet.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--unet-steps", "0"], "--unet-steps 0"),
    (["--samples", "-1"], "--samples -1"),
])
def test_train_cli_rejects_bad_arguments(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        train_main(["--out", str(tmp_path / "m"), "--work-dir", str(tmp_path / "w"), *argv])


def test_evaluate_cli_names_a_missing_model(tmp_path):
    with pytest.raises(SystemExit, match="no base model"):
        evaluate_main(["--model", str(tmp_path / "nowhere")])


def test_a_resumed_run_may_change_its_length(trained):
    root, _ = trained
    summary = train_main(["--out", str(root / "model"), "--work-dir", str(root / "work"), "--samples", "32",
                          "--vae-steps", "2", "--unet-steps", "3", "--batch-size", "4", "--quiet"])
    assert summary["config"]["unet_steps"] == 3


def test_interrupted_unet_training_resumes_to_the_same_weights(tmp_path):
    from recipes.demo.base_model import BaseModelConfig, build_components
    from recipes.demo.train_base import TrainBaseConfig, train_unet

    config = TrainBaseConfig(unet_steps=4, unet_batch_size=2, checkpoint_every=2, warmup_steps=1)
    latent = (torch.randn(6, 8, 8, 8), torch.full((6, 8, 8, 8), 0.1))
    text = (torch.randn(3, 16, 64), torch.tensor([1, 2, 1, 2, 1, 2]))

    def parts():
        built = build_components(BaseModelConfig())
        built.vae.register_to_config(scaling_factor=1.0)
        return built

    straight = train_unet(parts(), latent, text, config, tmp_path, progress=False)
    assert (tmp_path / "unet.pt").is_file()  # written at step 2, as if the run had stopped there
    # Start the second run from other weights: only loading the checkpoint can make it end where the first did.
    second = parts()
    with torch.no_grad():
        for parameter in second.unet.parameters():
            parameter.add_(0.5)
    resumed = train_unet(second, latent, text, config, tmp_path, progress=False)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)
