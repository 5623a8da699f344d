"""Tiny random Hugging Face CLIP checkpoints for the clr and CLIP converter tests: a CLIPModel
with unusual settings, CLIP's byte-level BPE over a small vocabulary, a CLIPImageProcessor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# text and vision widths differ from each other and from projection_dim; odd head counts,
# different depths, a 40-pixel image in 8-pixel patches, a non-default layer_norm_eps
TEXT = dict(hidden_size=30, intermediate_size=37, num_hidden_layers=2, num_attention_heads=3,
            max_position_embeddings=24, layer_norm_eps=1e-6, hidden_act="quick_gelu")
VISION = dict(hidden_size=35, intermediate_size=29, num_hidden_layers=3, num_attention_heads=5,
              image_size=40, patch_size=8, layer_norm_eps=1e-6, hidden_act="gelu")
PROJECTION = 22
LOGIT_SCALE = 3.1  # not HF's default init value 2.6592
MERGES = [("a", "t</w>"), ("c", "at</w>"), ("d", "o"), ("do", "g</w>"), ("p", "h"),
          ("ph", "o"), ("t", "o</w>"), ("pho", "to</w>"), ("o", "f</w>"), ("a", "n</w>")]
CAPTIONS = ["a photo of a cat", "A DOG!", "an  Photo of a dog,2\tcats", "cat"]


def clip_vocab() -> dict[str, int]:
    """CLIP's vocabulary layout, small: the 256 byte symbols, the same with the word end `</w>`,
    the merges, then <|startoftext|> and <|endoftext|> (the highest id, as in CLIP's)."""
    from tp_text.bpe import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def clip_tokenizer(pad: str = "<|endoftext|>") -> Any:
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=clip_vocab(), merges=list(MERGES), pad_token=pad)


def image_processor(size: int = 40) -> Any:
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size},
                              crop_size={"height": size, "width": size})


def hf_clip(legacy_eos: bool = False, pad: str = "<|endoftext|>", seed: int = 0,
            **overrides: Any) -> Any:
    """A random CLIPModel (eval mode) over `clip_vocab()`; `legacy_eos`: eos_token_id 2 (HF then
    pools at each row's highest id), else the <|endoftext|> id; `pad`: the tokenizer's padding
    token. `overrides`: `text_*` / `vision_*` keys for the towers, others for the CLIPConfig."""
    from transformers import CLIPConfig, CLIPModel

    vocab = clip_vocab()
    text = {**TEXT, "vocab_size": len(vocab), "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": 2 if legacy_eos else vocab["<|endoftext|>"],
            "pad_token_id": vocab[pad]}
    vision = dict(VISION)
    top: dict[str, Any] = {"projection_dim": PROJECTION, "logit_scale_init_value": LOGIT_SCALE}
    for key, value in overrides.items():
        if key.startswith("text_"):
            text[key[5:]] = value
        elif key.startswith("vision_"):
            vision[key[7:]] = value
        else:
            top[key] = value
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, **top)).eval()
    with torch.no_grad():  # the LayerNorms start at 1 and 0: make them count
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def save_hf_clip(folder: Path, model: Any) -> Path:
    """model.safetensors + config.json, the tokenizer (padding with the config's pad token)
    and the image processor, as save_pretrained writes them."""
    from transformers import CLIPProcessor

    ids = {i: t for t, i in clip_vocab().items()}
    pad = ids[model.config.text_config.pad_token_id]
    model.save_pretrained(str(folder))
    size = model.config.vision_config.image_size
    CLIPProcessor(image_processor=image_processor(size),
                  tokenizer=clip_tokenizer(pad)).save_pretrained(str(folder))
    return folder


def images(n: int, size: int, seed: int = 0) -> list[Any]:
    """n random RGB PIL images of assorted shapes (wider, taller, smaller than `size`)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    shapes = [(size + 13, size * 2), (size * 2 + 3, size + 5), (size - 7, size - 2),
              (size, size)]
    return [Image.fromarray(rng.integers(0, 256, (*shapes[i % 4], 3), dtype=np.uint8))
            for i in range(n)]
