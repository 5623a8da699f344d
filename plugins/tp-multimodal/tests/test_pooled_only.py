"""A dual-stream model whose target reads each stream's pooled vector alone (CLIP's clr) trains
each stream's last layer at the position its pooling reads only (the text's last real token,
the image's class token): the loss and every gradient are those of the whole computation, while
the last feed-forward blocks see one row per example."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from tpcli.plugins import get_plugins

sys.path.insert(0, str(Path(__file__).parent))  # the shared helpers (pytest imports by path)
from clip_models import TEXT, VISION, clip_vocab, hf_clip, save_hf_clip  # noqa: E402


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    vocab = clip_vocab()
    ids = torch.randint(3, len(vocab) - 2, (4, 9), generator=g)
    lengths = torch.tensor([9, 5, 7, 3])
    mask = torch.arange(9)[None, :] < lengths[:, None]
    eos = vocab["<|endoftext|>"]
    ids[torch.arange(4), lengths - 1] = eos
    ids = ids.masked_fill(~mask, eos)  # CLIP pads with <|endoftext|>
    size = VISION["image_size"]
    return {"stream_0.input_ids": ids, "stream_0.attention_mask": mask,
            "stream_1.pixel_values": torch.randn(4, 3, size, size, generator=g)}


def step(model: Any, b: dict[str, torch.Tensor], pooled_only: bool
         ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], list[int]]:
    model.pooled_only = pooled_only
    rows: list[int] = []
    hooks = [stack.encoder.layers[-1].ffn.register_forward_hook(
        lambda _m, args, _out: rows.append(args[0].numel() // args[0].shape[-1]))
        for stack in (model.stream_0, model.stream_1)]
    model.zero_grad(set_to_none=True)
    out = model(b)
    out.loss.backward()
    predicted = model.predict(b)["clr"]
    for h in hooks:
        h.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads, predicted, rows


def test_each_stream_computes_its_pooled_position_only(tmp_path: Path) -> None:
    from tpcli.convert.hf import from_hf
    from tpcli.train.checkpoint import load_checkpoint

    plugins = get_plugins()
    from_hf(str(save_hf_clip(tmp_path / "hf", hf_clip())), tmp_path / "tp", plugins)
    model = load_checkpoint(tmp_path / "tp", plugins).model.train()
    assert model.pooled_only
    assert model.stream_0.pools_one and model.stream_1.pools_one
    b = batch()
    loss, grads, predicted, rows = step(model, b, True)
    ref_loss, ref_grads, ref_predicted, ref_rows = step(model, b, False)
    patches = (VISION["image_size"] // VISION["patch_size"]) ** 2
    # training: one row per example in each last layer; predict (and so a conversion's check
    # against HF) computes every position
    every = [int(b["stream_0.attention_mask"].sum()), 4 * (patches + 1)]
    assert rows == [4, 4] + every
    assert ref_rows == every * 2
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for key in ("text_embeds", "image_embeds", "logits_per_text"):
        torch.testing.assert_close(predicted[key], ref_predicted[key], rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=5e-6, msg=name)
    assert TEXT["num_hidden_layers"] == len(model.stream_0.encoder.layers)
