"""The demo base model's tokenizer and text encoder: a CLIP BPE tokenizer over the world's few dozen words and
a one-layer CLIP text model whose word embeddings are orthogonal, so it tells words apart without training.

Both are built offline from the world's vocabulary (no hub): every caption word is one token.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from recipes.demo.world import vocabulary

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bpe_symbols(word: str) -> list[str]:
    # CLIP's BPE starts from characters and marks the last one with "</w>" (end of word).
    return list(word[:-1]) + [word[-1] + "</w>"]


def build_tokenizer(words: list[str] | None = None, max_length: int = 16) -> CLIPTokenizer:
    """A CLIPTokenizer whose vocabulary is the special tokens, then each word, then the pieces BPE passes through.

    Merges rebuild each word left to right ("s t", "st a", "sta r</w>"); the words come first in the id order
    so that the text encoder can give exactly them orthogonal embeddings.
    """
    words = words if words is not None else vocabulary()
    vocab: dict[str, int] = {BOS: 0, EOS: 1}
    for word in words:
        vocab.setdefault(word + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        symbols = _bpe_symbols(word)
        for symbol in symbols:
            vocab.setdefault(symbol, len(vocab))
        merged = symbols[0]
        for symbol in symbols[1:]:
            merge = (merged, symbol)
            if merge not in merges:
                merges.append(merge)
            merged += symbol
            vocab.setdefault(merged, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    for word in words:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if ids != [vocab[word + "</w>"]]:
            # Another word's merge fired inside this one; reordering the vocabulary would fix it.
            raise ValueError(f"word {word!r} tokenizes to {tokenizer.convert_ids_to_tokens(ids)}, not one token")
    return tokenizer


def write_vocab_files(tokenizer: CLIPTokenizer, directory: str | Path) -> None:
    """Write vocab.json and merges.txt beside tokenizer.json: transformers 4's slow CLIPTokenizer, which
    diffusers picks for SD pipelines there, reads only these two files."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    directory = Path(directory)
    (directory / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False) + "\n")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))


def build_text_encoder(tokenizer: CLIPTokenizer, hidden_size: int = 64, seed: int = 0) -> CLIPTextModel:
    """A frozen one-layer CLIP text model; the first `hidden_size` token ids (specials and words) get orthogonal
    embeddings of norm sqrt(hidden_size), large next to the randomly initialised layer's outputs, so each output
    vector is dominated by its own word and differs clearly from every other word's.
    """
    vocab_size = len(tokenizer)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    generator = torch.Generator().manual_seed(seed)
    model = CLIPTextModel(config)
    with torch.no_grad():
        for parameter in model.parameters():  # seeded, so the same call builds the same encoder anywhere
            if parameter.ndim > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        embedding = torch.randn(vocab_size, hidden_size, generator=generator)
        n_orthogonal = min(vocab_size, hidden_size)
        q, _ = torch.linalg.qr(torch.randn(hidden_size, hidden_size, generator=generator))
        embedding[:n_orthogonal] = q[:n_orthogonal]
        embedding = embedding / embedding.norm(dim=1, keepdim=True) * hidden_size**0.5
        # transformers 5 dropped the `text_model` wrapper; 4.x still has it.
        embeddings = getattr(model, "text_model", model).embeddings
        embeddings.token_embedding.weight.copy_(embedding)
        # Small position embeddings: they tell repeated padding apart without drowning the word identity.
        positions = embeddings.position_embedding.weight
        positions.copy_(torch.randn(positions.shape, generator=generator) * 0.1)
    model.requires_grad_(False)
    return model.eval()
