"""Captions from a tiny random Qwen2-VL and masks from a tiny random SAM, built from configs, saved and loaded back
through `from_pretrained` exactly as the real default models are (no hub)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    SamConfig,
    SamImageProcessorPil,
    SamModel,
)

from fixtures import rows
from flexip.cli import main
from prep_media import write_photos, write_views

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                "<|video_pad|>"]  # fmt: skip


def save_tiny_qwen2_vl(path: Path) -> Path:
    """Qwen2-VL's architecture at width 32, with a byte-level tokenizer holding Qwen's special tokens."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL}
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
            rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2], "rope_type": "default"},
        ),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_sam(path: Path) -> Path:
    """SAM's architecture (ViT image encoder, prompt encoder, mask decoder) at 64 px and width 16-32."""
    config = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16, global_attn_indexes=[1], window_size=2, mlp_dim=64,
                           num_pos_feats=8),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32,
                                 iou_head_hidden_dim=16),
    )  # fmt: skip
    torch.manual_seed(0)
    SamModel(config).save_pretrained(path)
    SamImageProcessorPil(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}).save_pretrained(path)
    return path


def test_captions_fill_the_empty_rows_record_their_model_and_resume(tmp_path, capsys):
    model = save_tiny_qwen2_vl(tmp_path / "qwen")
    manifest = tmp_path / "views.jsonl"
    main(["prep", "views", str(write_views(tmp_path)), "--out", str(manifest), "--min-size", "16"])
    before = rows(manifest)
    out = tmp_path / "captioned" / "views.jsonl"
    assert main(["prep", "caption", str(manifest), "--out", str(out), "--model", str(model), "--batch-size", "3"]) == 0
    after = rows(out)
    assert len(after) == len(before)
    for old, new in zip(before, after):
        assert (manifest.parent / old["target"]).resolve() == (out.parent / new["target"]).resolve()  # rebased
        if old["caption"]:
            assert new["caption"] == old["caption"] and new["caption_from"] == "sidecar"  # kept
        else:
            assert new["caption"] and new["caption_from"] == str(model)
    # Rows sharing a target share its caption.
    by_target = {}
    assert all(by_target.setdefault(r["target"], r["caption"]) == r["caption"] for r in after)
    # In place, the captioned manifest has nothing left to do; its rows are kept as they are.
    capsys.readouterr()
    assert main(["prep", "caption", str(out), "--in-place", "--model", str(model)]) == 0
    assert rows(out) == after and f"{len(after)} rows ->" in capsys.readouterr().out


def test_captions_split_by_launcher_and_from_a_column(tmp_path, monkeypatch):
    manifest = tmp_path / "views.jsonl"
    main(["prep", "views", str(write_views(tmp_path)), "--out", str(manifest), "--min-size", "16"])
    with_alt = [{**row, "alt": f"alt text {i}"} for i, row in enumerate(rows(manifest))]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in with_alt))
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        assert main(["prep", "caption", str(manifest), "--in-place", "--from-column", "alt"]) == 0
    captioned = rows(manifest)
    assert [r["caption"] for r in captioned] == [old["caption"] or old["alt"] for old in with_alt]
    assert {r["caption_from"] for r in captioned} == {"sidecar", "column:alt"}


def test_masks_from_a_segmentation_model_fit_their_photos_and_train(tmp_path):
    model = save_tiny_sam(tmp_path / "sam")
    out = tmp_path / "images.jsonl"
    args = ["prep", "images", str(write_photos(tmp_path)), "--out", str(out), "--min-size", "16", "--mask-model", str(model)]
    assert main(args) == 0
    pairs = rows(out)
    assert pairs and all(row["mask"].startswith("images-files/masks/") for row in pairs)
    for row in pairs:
        with Image.open(out.parent / row["mask"]) as mask, Image.open(out.parent / row["target"]) as photo:
            assert mask.mode == "L" and mask.size == photo.size and set(np.unique(np.asarray(mask))) <= {0, 255}
    from test_prep_media import load_every_pair

    load_every_pair(out)
