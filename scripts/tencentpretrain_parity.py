"""TencentPretrain's own model against tp's, through `tp convert --from/--to tencentpretrain`.

Local only (TencentPretrain's code is not shipped with tp): for each of TencentPretrain's model
configs, shrunk to a tiny model, build TencentPretrain's model with its code, randomise every
weight, save its state dict (as its pretrain.py does), convert it --from tencentpretrain, and
compare the logits of both models on one padded batch; then convert the tp folder back --to
tencentpretrain and check the state dict comes back bit for bit and loads into TencentPretrain's
model with strict=True.

    python scripts/tencentpretrain_parity.py /path/to/TencentPretrain [family ...]

Prints one line per family: the max abs difference of the logits over real positions, and
whether the round trip was exact. TencentPretrain's LayerNorm divides by the unbiased standard
deviation plus eps (not sqrt(biased variance + eps), as torch's and tp's): a difference of the
models, not of the conversion, of relative size 1/(2 hidden). So each family is compared twice:
as is ("as is"), and with TencentPretrain's LayerNorm computed as torch's ("same norm"), which
isolates the conversion. Exits 1 if a "same norm" difference is above --tolerance.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import torch

# family -> (config under models/, what to compare)
FAMILIES = {
    "bert": "bert/base_config.json", "roberta": "xlm-roberta/base_config.json",
    "albert": "albert/base_config.json", "gpt2": "gpt2/config.json",
    "llama": "llama/7b_config.json", "llama2-gqa": "llama2/70b_config.json", "t5": "t5/small_config.json",
    "t5-v1_1": "t5-v1_1/small_config.json", "bart": "bart/base_config.json",
    "lstm": "rnn/lstm_config.json", "gru": "rnn/gru_config.json",
    "bilstm": "rnn/bilstm_config.json",
}
VOCAB, LENGTH, ROWS = 120, 12, 3


def tiny(config: dict) -> dict:
    """The config with a tiny model of the same kind (and TencentPretrain's norm eps)."""
    c = dict(config)
    c.update(layers_num=2, heads_num=4, hidden_size=64, feedforward_size=96, dropout=0.0)
    c["emb_size"] = 32 if c.get("factorized_embedding_parameterization") else 64
    if c.get("encoder") in ("lstm", "gru", "bilstm"):
        c.pop("heads_num"), c.pop("feedforward_size")
        c["emb_size"] = 48
    if "decoder_layers_num" in c:
        c["decoder_layers_num"] = 2
    if "local_kv_heads_num" in c:  # grouped-query attention
        c["local_kv_heads_num"] = 2
    if "attention_head_size" in c:
        c["attention_head_size"] = 8
    if "max_seq_length" in c:
        c["max_seq_length"] = 64
    return c


def tpre_args(tpre: Path, config: dict):
    from tencentpretrain.opts import model_opts, tokenizer_opts, tgt_tokenizer_opts, mp_opts

    p = argparse.ArgumentParser()
    model_opts(p), tokenizer_opts(p), tgt_tokenizer_opts(p), mp_opts(p)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--data_processor", default="bert")
    p.add_argument("--labels_num", type=int, default=None)
    a = vars(p.parse_args([]))
    a.update(config)
    a = argparse.Namespace(**a)
    a.tokenizer = types.SimpleNamespace(vocab=list(range(VOCAB)))
    a.tgt_tokenizer, a.vocab_size = a.tokenizer, VOCAB
    return a


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (ROWS, LENGTH), generator=g)
    mask = torch.ones(ROWS, LENGTH, dtype=torch.bool)
    for r in range(ROWS):
        mask[r, LENGTH - 3 * r:] = False
    seg = ((torch.arange(LENGTH) >= LENGTH // 2).long().expand_as(ids)) * mask
    tgt = torch.randint(1, VOCAB, (ROWS, LENGTH - 4), generator=g)
    tmask = torch.ones_like(tgt, dtype=torch.bool)
    return {"input_ids": ids.masked_fill(~mask, 0), "attention_mask": mask, "segment_ids": seg,
            "tgt_input_ids": tgt, "tgt_attention_mask": tmask}


def tpre_logits(m, cfg: dict, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TencentPretrain's logits of each target, through its modules (its forward takes labels)."""
    src, mask = b["input_ids"], b["attention_mask"]
    seg = (b["segment_ids"] + 1) * mask  # its ids: 1 = A, 2 = B, 0 = padding
    hidden = m.encoder(m.embedding(src, seg), seg)
    if m.decoder is not None:
        tgt = b["tgt_input_ids"]
        tseg = torch.ones_like(tgt)
        hidden = m.decoder(hidden, m.tgt_embedding(tgt, tseg), (src, seg, tseg))
    out = {}
    for name in cfg["target"]:
        t = getattr(m.target, name)
        if name == "mlm":
            out[name] = t.linear_2(t.layer_norm(t.act(t.linear_1(hidden))))
        elif name == "lm":
            out[name] = t.output_layer(hidden)
        elif name == "bilm":
            half = hidden.shape[-1] // 2
            out[name] = torch.stack([t.output_layer(hidden[..., :half]),
                                     t.output_layer(hidden[..., half:])], dim=-2)
    return out


def _worst(theirs: dict, mine: dict, b: dict, seq2seq: bool, rows: int = ROWS) -> float:
    """Over the real positions of the first `rows` rows (row 0 has no padding)."""
    mask = (b["tgt_attention_mask"] if seq2seq else b["attention_mask"]).clone()
    mask[rows:] = False
    worst = 0.0
    for name, ref in theirs.items():
        worst = max(worst, float((mine[name] - ref).abs()[mask].max()))
    return worst


@contextlib.contextmanager
def torch_layer_norm(eps: float | None = None):
    """TencentPretrain's LayerNorm computed as torch's: (x - mean) / sqrt(var + eps); with
    `eps`, that eps everywhere (its embedding and mlm norms keep 1e-6 whatever the config's
    layernorm_eps, tp's use the config's)."""
    from tencentpretrain.layers.layer_norm import LayerNorm

    saved = LayerNorm.forward
    LayerNorm.forward = lambda self, x: torch.nn.functional.layer_norm(
        x, (x.shape[-1],), self.gamma, self.beta, self.eps if eps is None else eps)
    try:
        yield
    finally:
        LayerNorm.forward = saved


def run_family(tpre: Path, family: str, work: Path, tolerance: float) -> bool:
    from tencentpretrain.model_builder import build_model as tpre_build

    from tpcli.convert.tencentpretrain import from_tencentpretrain, to_tencentpretrain
    from tpcli.plugins import get_plugins
    from tpcli.train.checkpoint import load_checkpoint

    plugins = get_plugins()
    cfg = tiny(json.loads((tpre / "models" / FAMILIES[family]).read_text()))
    cfg_path = work / f"{family}_config.json"
    cfg_path.write_text(json.dumps(cfg))
    torch.manual_seed(0)
    m = tpre_build(tpre_args(tpre, cfg)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.2)
    sd = m.state_dict()
    torch.save(sd, work / f"{family}.bin")
    result = from_tencentpretrain(work / f"{family}.bin", cfg_path, work / family, plugins)
    ours = load_checkpoint(work / family, plugins).model
    b = batch()
    with torch.no_grad():
        theirs = tpre_logits(m, cfg, b)
        mine = ours.predict(b)
        as_is = _worst(theirs, mine, b, m.decoder is not None)
        with torch_layer_norm():
            same = tpre_logits(m, cfg, b)
        worst = _worst(same, mine, b, m.decoder is not None)
        # TencentPretrain's backward RNN reads the padding first (it flips the whole row)
        unpadded = _worst(same, mine, b, m.decoder is not None, rows=1)
    to_tencentpretrain(work / family, work / f"{family}-back", plugins)
    back = torch.load(work / f"{family}-back" / "model.bin", weights_only=True)
    differ = sorted(k for k in sd if k not in back or not torch.equal(back[k], sd[k]))
    # TencentPretrain's layers read encoder.transformer.N.relative_pos_emb; its encoder's own
    # encoder.relative_pos_emb is an unused random table, which tp writes as the layers' one
    unused = ["encoder.relative_pos_emb.relative_attention_bias.weight"]
    exact = set(back) == set(sd) and differ in ([], unused)
    fresh = tpre_build(tpre_args(tpre, json.loads(
        (work / f"{family}-back" / "config.json").read_text()) | {"dropout": 0.0}))
    fresh.load_state_dict(back, strict=True)
    notes = f" ({len(result.notes)} notes)" if result.notes else ""
    trip = ("DIFFERS" if not exact else "bit-exact" if not differ
            else "bit-exact but the unused encoder.relative_pos_emb")
    print(f"{family:8s} max abs diff: as is {as_is:.2e}, same norm {worst:.2e} (unpadded row "
          f"{unpadded:.2e}); round trip "
          f"{trip}, strict load ok{notes}")
    return (worst if cfg.get("encoder") not in ("bilstm",) else unpadded) <= tolerance and exact


# tp's own recipes (tiny), written --to tencentpretrain and loaded by TencentPretrain's model
NATIVE = {
    "bert-tiny": [],
    "gpt2": ["model.hidden_size=32", "model.encoder.layers=2", "model.encoder.heads=2",
             "model.encoder.ffn_size=64"],
    "llama-style": [], "elmo": [],
}


def run_native(tpre: Path, recipe: str, work: Path, tolerance: float) -> bool:
    """A tp checkpoint of built-in `recipe` --to tencentpretrain, loaded strictly by
    TencentPretrain's model built from the written config.json: the same logits."""
    from tencentpretrain.model_builder import build_model as tpre_build

    from tpcli.convert.tencentpretrain import to_tencentpretrain
    from tpcli.plugins import get_plugins
    from tpcli.testing.convert import make_run
    from tpcli.train.checkpoint import load_checkpoint

    global VOCAB
    plugins = get_plugins()
    run = make_run(recipe, work / recipe / "run", NATIVE[recipe])
    result = to_tencentpretrain(run, work / recipe / "tpre", plugins)
    cfg = json.loads((work / recipe / "tpre" / "config.json").read_text())
    state = torch.load(work / recipe / "tpre" / "model.bin", weights_only=True)
    ours = load_checkpoint(run, plugins).model
    VOCAB = int(state["embedding.word.embedding.weight"].shape[0])
    m = tpre_build(tpre_args(tpre, cfg)).eval()
    m.load_state_dict(state, strict=True)
    b = batch()
    with torch.no_grad():
        mine = ours.predict(b)
        as_is = _worst(tpre_logits(m, cfg, b), mine, b, False)
        with torch_layer_norm(cfg.get("layernorm_eps")):
            same = tpre_logits(m, cfg, b)
    worst = _worst(same, mine, b, False)
    scale = max(float(v.abs().max()) for v in mine.values())
    unpadded = _worst(same, mine, b, False, rows=1)
    print(f"tp {recipe:12s} --to, strict load ok; max abs diff: as is {as_is:.2e}, same norm "
          f"{worst:.2e} (unpadded row {unpadded:.2e}; logits up to {scale:.1f}); "
          f"{len(result.notes)} notes")
    return (unpadded if cfg.get("encoder") == "bilstm" else worst) <= tolerance


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout", type=Path, help="a TencentPretrain checkout")
    ap.add_argument("families", nargs="*", default=list(FAMILIES),
                    help=f"of {', '.join(FAMILIES)} and tp's recipes {', '.join(NATIVE)}")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    a = ap.parse_args()
    tpre = a.checkout.resolve()
    sys.path.insert(0, str(tpre))
    os.chdir(tpre)  # its constants module reads models/special_tokens_map.json
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for family in a.families:
            if family in FAMILIES:
                ok &= run_family(tpre, family, Path(tmp), a.tolerance)
        for recipe in NATIVE:
            if recipe in a.families or a.families == list(FAMILIES):
                ok &= run_native(tpre, recipe, Path(tmp), a.tolerance)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
